"""What raykd prints: scoped one-line messages, durations for people, progress with rate and ETA."""

from raykd.console import Progress, duration, say


def test_say_and_duration(capsys):
    say("hello", scope="raykd.capture")
    assert capsys.readouterr().err == "[raykd.capture] hello\n"
    assert [duration(s) for s in (0, 42.4, 60, 187)] == ["0s", "42s", "1m00s", "3m07s"]


def test_progress_is_due_every_interval_and_at_the_end():
    p = Progress(total=10, every_s=3600, start=0.0)
    assert p.due(1)  # the first call prints
    assert not p.due(2)  # then not before the interval
    assert p.due(10)  # the end always prints
    line = Progress(total=4, every_s=0).rate_eta(2, "prompts")
    assert "prompts/s, eta " in line
