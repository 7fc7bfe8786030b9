"""Packing: text streams cut every L tokens, records packed whole (best-fit decreasing), nothing lost silently,
and no loss ever crosses a record boundary."""

import numpy as np

from raykd.data.packing import pack_chunk


def _rec(ids, mask=None, weight=1.0, where="f:1"):
    ids = np.asarray(ids, np.int32)
    mask = np.ones(len(ids), np.uint8) if mask is None else np.asarray(mask, np.uint8)
    mask[0] = 0
    return ids, mask, weight, where


def _no_loss_crosses_a_record(p):
    """Every trained token's predecessor is in the same record of the block (and nothing trains padding)."""
    for b in range(len(p.ids)):
        for t in np.flatnonzero(p.mask[b]):
            assert t > 0 and p.segment[b, t] != 0 and p.segment[b, t] == p.segment[b, t - 1], (b, t)


def test_text_is_cut_every_L_and_the_tail_padded():
    docs = [_rec([1, 2, 3, 9]), _rec([4, 5, 6, 7, 8, 9]), _rec([10, 9])]
    p = pack_chunk(docs, "text", 4, 0, weighted=False)
    assert p.ids.tolist() == [[1, 2, 3, 9], [4, 5, 6, 7], [8, 9, 10, 9]]
    assert p.segment.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 2]]
    # first token of a block and of each document is never trained
    assert p.mask.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 1]]
    assert p.stats.blocks == 3 and p.stats.tokens == 12 and p.stats.padding == 0 and p.stats.trained == 8
    tail = pack_chunk(docs[:2], "text", 4, 0, weighted=False)
    assert tail.ids.tolist()[-1] == [8, 9, 0, 0] and tail.mask[-1].tolist() == [0, 1, 0, 0]  # padded, not dropped
    assert tail.stats.padding == 2 and tail.stats.tokens == 10
    _no_loss_crosses_a_record(p)
    _no_loss_crosses_a_record(tail)


def test_text_weights_follow_their_records():
    docs = [_rec([1, 2, 3, 9], weight=2.0), _rec([4, 5, 6, 7, 8, 9], weight=0.0), _rec([10, 9], weight=0.5)]
    p = pack_chunk(docs, "text", 4, 0, weighted=True)
    assert p.weight.tolist() == [[2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0.5, 0.5]]


def test_records_are_packed_whole_and_too_long_ones_dropped_and_counted():
    lengths = [5, 3, 9, 2, 6, 4, 12, 1]  # L = 8: the 9 and the 12 do not fit
    recs = [_rec(np.arange(n) + 10 * i + 1, where=f"f:{i + 1}") for i, n in enumerate(lengths)]
    p = pack_chunk(recs, "chat", 8, 0, weighted=False)
    assert p.stats.records == 8 and p.stats.too_long == 2 and p.stats.longest_dropped == 12
    assert p.stats.first_dropped == "f:3"
    kept = [r for r, n in zip(recs, lengths) if n <= 8]
    # Every kept record appears exactly once, whole and contiguous, in one block.
    placed = []
    for b in range(len(p.ids)):
        for s in range(1, p.segment[b].max() + 1):
            placed.append(p.ids[b][p.segment[b] == s].tolist())
    assert sorted(placed) == sorted(r[0].tolist() for r in kept)
    assert p.stats.tokens == sum(n for n in lengths if n <= 8) == (p.segment > 0).sum()
    assert p.stats.padding == len(p.ids) * 8 - p.stats.tokens
    assert len(p.ids) == 3  # best fit: 6+2, 5+3, 4+1 (+ padding)
    _no_loss_crosses_a_record(p)
    # records of a block keep their file order
    for b in range(len(p.ids)):
        firsts = [p.ids[b][p.segment[b] == s][0] for s in range(1, p.segment[b].max() + 1)]
        assert firsts == sorted(firsts)


def test_prompt_tokens_stay_untrained_through_packing():
    recs = [_rec([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]), _rec([6, 7, 8], [0, 1, 1])]
    p = pack_chunk(recs, "prompt_completion", 8, 0, weighted=False)
    assert len(p.ids) == 1
    assert p.ids[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and p.mask[0].tolist() == [0, 0, 0, 1, 1, 0, 1, 1]
    _no_loss_crosses_a_record(p)
