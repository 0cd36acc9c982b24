"""The progress core: rate and ETA from an injected clock, throttled reports, totals, quiet short loops, nested
loops silent, a failing sink dropped without failing the loop."""

from __future__ import annotations

import contextvars
import io
import threading

import pytest

from deepprune.progress import Progress, Snapshot, TerminalSink, reporting, track


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, interval: float = 2.0, min_seconds: float = 0.0) -> None:
        self.interval, self.min_seconds = interval, min_seconds
        self.seen: list[Snapshot] = []

    def report(self, snapshot: Snapshot) -> None:
        self.seen.append(snapshot)


def test_rate_eta_and_extra_counts_follow_the_clock():
    clock = Clock()
    progress = Progress("sample[live] generating", 10, "problems", clock=clock)
    clock.now += 4.0
    progress.advance(2, tokens=300)
    snap = progress.snapshot()
    assert (snap.done, snap.total, snap.fraction) == (2, 10, 0.2)
    assert snap.rate == pytest.approx(0.5)            # 2 problems in 4 s
    assert snap.rate_of(snap.counts["tokens"]) == pytest.approx(75.0)  # tokens/s
    assert snap.eta == pytest.approx(16.0)            # 8 left at 0.5/s
    assert snap.line() == ("sample[live] generating: 2/10 problems (20.0%) | 0.50 problems/s | "
                           "300 tokens, 75.0 tokens/s | ETA 0:16")
    clock.now += 16.0
    progress.advance(8, tokens=1200)
    final = progress.snapshot(final=True)
    assert (final.fraction, final.eta) == (1.0, 0.0)
    assert final.line().endswith("1,500 tokens, 75.0 tokens/s | done in 0:20")


def test_unknown_total_and_empty_loop():
    clock = Clock()
    unknown = Progress("replaying", None, "problems", clock=clock)
    unknown.advance(3)
    assert unknown.snapshot().fraction is None and unknown.snapshot().eta is None
    assert "ETA ?" in unknown.snapshot().line() and "? problems/s" in unknown.snapshot().line()  # no time passed
    assert Progress("nothing", 0, clock=clock).snapshot().fraction == 1.0


def test_reports_are_throttled_and_the_last_always_goes_out():
    clock, sink = Clock(), Recorder(interval=2.0)
    progress = Progress("embed", 20, "texts", sinks=[sink], clock=clock)
    for _ in range(20):  # one text every 0.5 s: a report every 2 s, not every text
        clock.now += 0.5
        progress.advance()
    assert [s.done for s in sink.seen] == [4, 8, 12, 16, 20]
    progress.close()
    progress.close()  # idempotent
    assert len(sink.seen) == 6 and sink.seen[-1].final and sink.seen[-1].done == 20


def test_a_short_loop_stays_quiet_on_the_terminal_but_not_where_min_seconds_is_zero():
    clock, quiet, always = Clock(), Recorder(min_seconds=1.0), Recorder(min_seconds=0.0)
    progress = Progress("label", 5, sinks=[quiet, always], clock=clock)
    clock.now += 0.5
    progress.advance(5)
    progress.close()
    assert quiet.seen == [] and [s.final for s in always.seen] == [True]


def test_terminal_sink_writes_plain_lines_when_not_a_tty_and_redraws_on_one():
    clock, stream = Clock(), io.StringIO()
    progress = Progress("prune[math] simulating", 4, "runs", sinks=[TerminalSink(stream)], clock=clock)
    for _ in range(4):
        clock.now += 1.0
        progress.advance()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["prune[math] simulating: 2/4 runs (50.0%) | 1.00 runs/s | ETA 0:02",
                     "prune[math] simulating: 4/4 runs (100.0%) | 1.00 runs/s | ETA 0:00",
                     "prune[math] simulating: 4/4 runs (100.0%) | 1.00 runs/s | done in 0:04"]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    progress = Progress("x", 2, sinks=[TerminalSink(tty)], clock=clock)
    clock.now += 1.0
    progress.advance()
    progress.close()
    assert tty.getvalue().startswith("\rx: 1/2 items") and tty.getvalue().endswith("\x1b[K\n")


def test_a_failing_sink_is_dropped_and_the_loop_goes_on(capsys):
    class Broken(Recorder):
        def report(self, snapshot: Snapshot) -> None:
            raise ConnectionError("server gone")

    clock, good, bad = Clock(), Recorder(), Broken()
    progress = Progress("judge", 3, sinks=[bad, good], clock=clock)
    for _ in range(3):
        clock.now += 5.0
        progress.advance()
    progress.close()
    assert [s.done for s in good.seen] == [1, 2, 3, 3]
    assert capsys.readouterr().err.count("Broken stopped reporting (ConnectionError: server gone)") == 1


def test_only_the_outermost_loop_reports_in_any_thread_of_the_context():
    sink = Recorder(interval=0.0)
    with reporting("judge[math]", sink):
        with track("cross-validating", 2, "folds") as outer:
            with track("encoding", 3, "texts") as inner:  # the encoder inside a fold
                inner.advance(3)


            def point() -> None:  # a sweep point on a thread of Prefect's task runner, which copies the context
                with track("cross-validating", 1, "folds") as nested:
                    nested.advance()

            worker = threading.Thread(target=contextvars.copy_context().run, args=(point,))
            worker.start()
            worker.join()
            outer.advance(2)
    assert {s.label for s in sink.seen} == {"judge[math] cross-validating"}
    assert sink.seen[-1].final and sink.seen[-1].done == 2 and len(sink.seen) == 2
    with reporting("embed[math]", sink):
        with track("encoding", 1, "texts") as progress:  # the depth went back to 0: a new loop reports again
            progress.advance()
    assert sink.seen[-1].label == "embed[math] encoding"


def test_a_loop_that_fails_reports_where_it_stopped():
    sink = Recorder()
    with pytest.raises(RuntimeError), reporting("online[live]", sink):
        with track("running methods", 4, "runs") as progress:
            progress.advance(1, tokens=10)
            raise RuntimeError("engine died")
    assert sink.seen[-1].final and sink.seen[-1].done == 1 and sink.seen[-1].counts == {"tokens": 10}
