"""Processes the platform starts for a run (a Prefect server, an inference server): ready before use, stopped
after, and never outliving the process that started them; and servers a run reports to, checked before use."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TERMINAL = "-"  # a service's log_path: its output goes to this process's stdout and stderr


try:  # looked up once here: a dlopen in a forked child can deadlock on a lock another thread of the parent held
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM when the parent that started it dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered when the block ends) in this thread: a second Ctrl-C while a
    service is being stopped must not cut the stop short of its SIGKILL and leave the service running."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0, group: bool = False,
                 first: signal.Signals = signal.SIGTERM) -> None:
    """`first` (SIGTERM), then SIGKILL after grace_s; always reaps the process. With `group`, to the whole process
    group it leads (it was started in a session of its own): what it started and what outlives it stop too (a
    server's worker processes, job consumers)."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)

    if proc.poll() is None or group:
        send(first)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
    if group:
        deadline = time.monotonic() + grace_s
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(proc.pid):
            send(signal.SIGKILL)
            deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously: gone when this returns
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def descendants(pid: int, recursive: bool = True) -> list:
    """The processes `pid` started, and (recursive) theirs, now (psutil.Process objects; empty when pid is gone).
    Taken before a process is stopped, it names what it started in sessions of their own, which a signal to its
    group misses."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=recursive)
    except psutil.Error:
        return []


def signal_groups(procs: Sequence, sig: signal.Signals) -> None:
    """`sig` to the process group of every process of `procs` still running (each group once)."""
    for pgid in {g for g in map(_pgid, _running(procs)) if g is not None}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def kill_after(procs: Sequence, grace_s: float) -> None:
    """Wait up to grace_s for every process of `procs` to end, then SIGKILL those still running. For what a
    stopped process had started in sessions of its own (a Prefect worker's flow runs and what they started)."""
    import psutil

    with _stop_signals_held():
        deadline = time.monotonic() + grace_s
        while _running(procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in _running(procs):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously: gone when this returns
        while _running(procs) and time.monotonic() < deadline:
            time.sleep(0.05)


def _running(procs: Sequence) -> list:
    import psutil

    def running(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    return [p for p in procs if running(p)]


def _pgid(proc) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    """Whether a live process (not a zombie waiting for its parent) is still in the process group."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


class Started:
    """A service's process, started and not yet waited for (`started`): wait_ready() waits until it answers."""

    def __init__(self, proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, name: str,
                 cmd: Sequence[str], log_path: str | os.PathLike | None, error: type[Exception]) -> None:
        self.proc, self._ready, self._name, self._cmd, self._error = proc, ready, name, cmd, error
        self._log = "its output is above" if log_path == TERMINAL else f"log: {log_path}"
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s = timeout_s

    def wait_ready(self) -> subprocess.Popen:
        """Wait until ready() (the time since the start counts); an exit or the timeout raises `error` naming it."""
        while not self._ready():
            if self.proc.poll() is not None:
                raise self._error(f"{self._name} exited with {self.proc.returncode} before it answered "
                                  f"({self._log})")
            if time.monotonic() > self._deadline:
                raise self._error(f"{self._name} did not answer within {self._timeout_s:.0f} s of starting "
                                  f"{self._cmd[0]!r} ({self._log})")
            time.sleep(0.25)
        return self.proc


@contextlib.contextmanager
def started(cmd: Sequence[str], ready: Callable[[], bool], timeout_s: float, name: str,
            log_path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
            error: type[Exception] = RuntimeError, grace_s: float = 30.0,
            stop_signal: signal.Signals = signal.SIGTERM) -> Iterator[Started]:
    """`service` in two steps, so that several services start at once: the process is started here and the block
    gets it before it answers (Started.wait_ready); it is stopped the same way when the block ends."""
    log = subprocess.DEVNULL
    if log_path == TERMINAL:
        log = None  # the output goes where this process's goes
    elif log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=None if env is None else dict(env), start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            yield Started(proc, ready, timeout_s, name, cmd, log_path, error)
        finally:
            with _stop_signals_held():
                stop_process(proc, grace_s, group=True, first=stop_signal)
    finally:
        if log not in (subprocess.DEVNULL, None):
            log.close()


@contextlib.contextmanager
def service(cmd: Sequence[str], ready: Callable[[], bool], timeout_s: float, name: str,
            log_path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
            error: type[Exception] = RuntimeError, grace_s: float = 30.0,
            stop_signal: signal.Signals = signal.SIGTERM) -> Iterator[subprocess.Popen]:
    """Start `cmd` in its own session (Ctrl-C in the terminal does not reach it; the block's owner stops it) with
    the parent-death signal set (a `kill -9` of this process sends `cmd` itself SIGTERM; what it started is then
    its to stop), wait until `ready()`, and stop it with everything it started (its process group: `stop_signal`,
    SIGKILL after `grace_s`) when the block ends, however it ends. Failing to start raises `error` naming `name`
    and the log."""
    with started(cmd, ready, timeout_s, name, log_path, env, error, grace_s, stop_signal) as handle:
        yield handle.wait_ready()


class Unreachable(ConnectionError):
    """A server the run reports to does not answer; the message names it and the local alternative."""


def http_status(url: str, timeout_s: float) -> int:
    """The HTTP status `url` answers with, an error status too; OSError when nothing answers within timeout_s
    (refused, silent, unknown host)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def require_answer(url: str, timeout_s: float, server: str, instead: str) -> None:
    """Raise Unreachable naming `server` and `instead` (what to do without it) unless some HTTP answer, any status,
    comes from `url` within timeout_s: a run that cannot report finds out before it computes, not after it."""
    try:
        http_status(url, timeout_s)
    except (OSError, ValueError) as exc:  # ValueError: a malformed URL
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(f"{server} does not answer within {timeout_s:g} s ({reason}); {instead}") from None
