"""What raykd prints: scoped one-line messages, durations for people, progress with rate and ETA."""

from raykd.console import Bar, Progress, duration, is_verbose, say, set_verbose


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


def _bar_lines(tty: bool, updates, total=100):
    import io

    out = io.StringIO()
    bar = Bar("train", total, "steps", stream=out, tty=tty, redraw_s=0)
    for done in updates:
        bar.update(done, f"loss {done}")
    bar.close()
    return out.getvalue(), bar


def test_bar_in_a_log_prints_a_line_per_quarter_whatever_the_number_of_updates():
    text, bar = _bar_lines(False, range(1, 101))
    lines = text.splitlines()
    assert len(lines) == bar.lines == 4  # 25, 50, 75, 100 %
    assert lines[0].startswith("[raykd] train [#####...............] 25/100 steps  loss 25  eta ")
    assert lines[-1].startswith("[raykd] train [####################] 100/100 steps  loss 100  in ")
    text, _ = _bar_lines(False, [10, 20, 30])  # stopped early (a time budget): its last state is kept
    assert text.splitlines()[-1].startswith("[raykd] train [######..............] 30/100 steps  loss 30")


def test_bar_on_a_terminal_redraws_one_line_and_says_above_it(capsys):
    bar = Bar("train", 10, "steps", tty=True, redraw_s=0)  # on sys.stderr
    bar.update(5, "loss 1")
    say("hello")
    bar.update(10, "loss 0.5")
    bar.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 2  # the message, then the finished bar
    screen = [line.split("\r\x1b[2K")[-1] for line in err.split("\n")[:-1]]  # what stays on the terminal
    assert screen[0] == "[raykd] hello"
    assert screen[1].startswith("[raykd] train [####################] 10/10 steps  loss 0.5  in ")
    assert Bar.active is None


def test_verbose_is_inherited_through_the_environment(monkeypatch):
    monkeypatch.delenv("RAYKD_VERBOSE", raising=False)
    assert not is_verbose()
    set_verbose(True)
    assert is_verbose() and __import__("os").environ["RAYKD_VERBOSE"] == "1"
    set_verbose(False)
    assert not is_verbose()
