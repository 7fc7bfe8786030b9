import pytest
import torch

from raykd.compress.prune import count_nonzero, decoder_linears, keep_zeros, magnitude_prune, make_permanent
from tests.compress.tiny import tiny_llama


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_magnitude_pruning_zeroes_exactly_the_requested_fraction_smallest_first(sparsity):
    model = tiny_llama()
    before = {n: m.weight.detach().clone() for n, m in decoder_linears(model).items()}
    assert before and all((w != 0).all() for w in before.values())
    dense_nonzero = count_nonzero(model)
    magnitude_prune(model, sparsity)
    make_permanent(model)
    zeroed = 0
    for name, layer in decoder_linears(model).items():
        w, orig = layer.weight.detach(), before[name]
        k = round(sparsity * orig.numel())
        assert int((w == 0).sum()) == k, name
        # the zeros are the k smallest magnitudes; the survivors are untouched
        assert orig.abs()[w == 0].max() <= orig.abs()[w != 0].min()
        assert torch.equal(w[w != 0], orig[w != 0])
        zeroed += k
    assert count_nonzero(model) == dense_nonzero - zeroed
    assert set(model.state_dict()) == set(tiny_llama().state_dict())  # plain HF names again


def test_kept_zeros_survive_training_steps():
    model = tiny_llama()
    magnitude_prune(model, 0.5)
    make_permanent(model)
    zeros = keep_zeros(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=torch.randint(0, 96, (2, 16))).logits.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    make_permanent(model)
    assert sum(int((m.weight == 0).sum()) for m in decoder_linears(model).values()) == zeros


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_open_interval_refused(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        magnitude_prune(tiny_llama(), bad)
