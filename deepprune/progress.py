"""Progress of long loops: items done of total, rate, ETA, and a rate for every extra count a loop keeps (tokens/s
when it generates). The core opens one around a loop with `track()`; the flows layer names the stage and installs
the sinks (the terminal, Prefect's progress artifact) with `reporting()`. Progress is only ever written to its
sinks, never to an output or a metric, so it cannot change a result."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

Clock = Callable[[], float]


@dataclass(frozen=True)
class Snapshot:
    """Where a loop stands: `done` of `total` (None: unknown) `unit`s after `elapsed` seconds, plus extra counts."""

    label: str
    done: float
    total: float | None
    unit: str
    elapsed: float
    counts: dict[str, float] = field(default_factory=dict)
    final: bool = False

    @property
    def fraction(self) -> float | None:
        """Share done, in [0, 1] (a loop with nothing to do is done); None when the total is unknown."""
        if self.total is None:
            return None
        return min(self.done / self.total, 1.0) if self.total > 0 else 1.0

    def rate_of(self, done: float) -> float | None:
        """`done` per second over the whole loop so far (None before any time has passed)."""
        return done / self.elapsed if self.elapsed > 0 else None

    @property
    def rate(self) -> float | None:
        return self.rate_of(self.done)

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate so far (0 when done, None when unknown)."""
        if self.total is None:
            return None
        left = max(self.total - self.done, 0.0)
        if left == 0:
            return 0.0
        return left / self.rate if self.rate else None

    def line(self) -> str:
        """One human line: 'embed[math] texts: 1,200/2,460 (48.8%) | 27.9 texts/s | ETA 0:45'."""
        parts = [f"{self.label}: {_count(self.done)}" + (f"/{_count(self.total)}" if self.total is not None else "")
                 + (f" {self.unit}" if self.unit else "")
                 + (f" ({100 * self.fraction:.1f}%)" if self.fraction is not None else "")]
        parts.append(_per_second(self.rate, self.unit))
        parts += [f"{_count(value)} {name}, {_per_second(self.rate_of(value), name)}"
                  for name, value in self.counts.items()]
        parts.append(f"done in {_clock(self.elapsed)}" if self.final else
                     f"ETA {_clock(self.eta) if self.eta is not None else '?'}")
        return " | ".join(parts)


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _per_second(rate: float | None, unit: str) -> str:
    if rate is None:
        return f"? {unit}/s"
    return f"{rate:,.{2 if rate < 10 else 1}f} {unit}/s"


def _clock(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Sink(Protocol):
    """Where snapshots go. A loop reports to a sink at most every `interval` seconds, and once at its end unless it
    ended within `min_seconds` without any report (short loops stay quiet)."""

    interval: float
    min_seconds: float

    def report(self, snapshot: Snapshot) -> None: ...


class TerminalSink:
    """Lines on stderr: redrawn in place on a terminal, one plain line per report otherwise (DVC's and CI's logs)."""

    min_seconds = 1.0

    def __init__(self, stream: TextIO | None = None, every: float = 2.0, tty_every: float = 0.5) -> None:
        self._stream, self.every, self.tty_every = stream, every, tty_every

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up late: tests and Prefect swap sys.stderr

    @property
    def tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def interval(self) -> float:
        return self.tty_every if self.tty else self.every

    def report(self, snapshot: Snapshot) -> None:
        if self.tty:
            self.stream.write("\r" + snapshot.line() + "\x1b[K" + ("\n" if snapshot.final else ""))
        else:
            self.stream.write(snapshot.line() + "\n")
        self.stream.flush()


@dataclass
class _Slot:
    """A sink as one loop sees it: when it last reported there, and whether it ever did."""

    sink: Sink
    last: float
    reported: bool = False


class Progress:
    """One loop's progress: `advance(n, tokens=...)` as work is done; reports go to the sinks, throttled."""

    def __init__(self, label: str, total: float | None = None, unit: str = "items", sinks: Sequence[Sink] = (),
                 clock: Clock = time.monotonic) -> None:
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.done = 0.0
        self.counts: dict[str, float] = {}
        self.start = clock()
        self._slots = [_Slot(sink, self.start) for sink in sinks]
        self._lock = threading.Lock()
        self.closed = False

    def snapshot(self, final: bool = False) -> Snapshot:
        return Snapshot(self.label, self.done, self.total, self.unit, max(self.clock() - self.start, 0.0),
                        dict(self.counts), final)

    def advance(self, n: float = 1, **counts: float) -> None:
        """`n` more units done; `counts` add to named running totals (tokens=...), each shown with its rate."""
        with self._lock:
            self.done += n
            for name, value in counts.items():
                self.counts[name] = self.counts.get(name, 0.0) + value
            self._emit(final=False)

    def close(self) -> None:
        """The end of the loop (also where it stopped, on an error): every sink gets its last report."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._emit(final=True)

    def _emit(self, final: bool) -> None:
        now = self.clock()
        snap = None
        for slot in list(self._slots):
            if final:
                if not slot.reported and now - self.start < slot.sink.min_seconds:
                    continue
            elif now - slot.last < slot.sink.interval:
                continue
            snap = snap or Snapshot(self.label, self.done, self.total, self.unit, max(now - self.start, 0.0),
                                    dict(self.counts), final)
            slot.last, slot.reported = now, True
            try:
                slot.sink.report(snap)
            except Exception as exc:  # a progress display must never fail the work it shows
                self._slots.remove(slot)
                print(f"progress: {type(slot.sink).__name__} stopped reporting ({type(exc).__name__}: {exc})",
                      file=sys.stderr)


@dataclass
class _Reporter:
    prefix: str
    sinks: tuple[Sink, ...]
    depth: int = 0  # loops open now, in any thread of this context (Prefect's task runners copy the context)
    lock: threading.Lock = field(default_factory=threading.Lock)


_DEFAULT = _Reporter("", (TerminalSink(),))
_REPORTER: contextvars.ContextVar[_Reporter | None] = contextvars.ContextVar("deepprune_progress", default=None)


@contextlib.contextmanager
def reporting(prefix: str, *sinks: Sink) -> Iterator[None]:
    """Loops tracked inside report to `sinks` (the terminal alone when none are given), labelled with `prefix`."""
    token = _REPORTER.set(_Reporter(prefix, tuple(sinks) or (TerminalSink(),)))
    try:
        yield
    finally:
        _REPORTER.reset(token)


@contextlib.contextmanager
def track(label: str, total: float | None = None, unit: str = "items",
          clock: Clock = time.monotonic) -> Iterator[Progress]:
    """A Progress for one loop. Only the outermost open loop reports: a loop inside it (the encoder's batches
    inside a judge's folds, a sweep point's folds inside the sweep) advances silently, so a stage shows one line."""
    reporter = _REPORTER.get() or _DEFAULT
    with reporter.lock:
        outermost = reporter.depth == 0
        reporter.depth += 1
    name = f"{reporter.prefix} {label}" if reporter.prefix else label
    progress = Progress(name, total, unit, reporter.sinks if outermost else (), clock)
    try:
        yield progress
    finally:
        with reporter.lock:
            reporter.depth -= 1
        progress.close()
