"""The LR schedule of the training loop (the data order: tests/data/test_order.py, tests/train/test_batches.py)."""

from raykd.train.loop import lr_lambda


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    f = lr_lambda(warmup=4, total=20)
    assert f(0) == 0.25 and f(3) == 1.0
    assert abs(f(19) - 0.1) < 0.02 and f(10) < f(5)
