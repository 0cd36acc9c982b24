"""Warm stage processes: a pipeline's stages start without paying for their imports.

A stage process spends 4 to 6 s importing torch, transformers, Prefect and MLflow before its own work begins, and
`make run` starts some 25 of them. While `flows.pipeline` runs `dvc repro`, it keeps one server process that has
imported every stage module once (`python -m flows.warm SOCKET ROOT`). DVC still starts each stage with its own
command (`python -m flows.judge math`); importing the `flows` package hands that command to the server
(`hand_off`), which forks a child to run it: the child takes the command's working directory, environment,
arguments and standard streams, and the command waits for it and exits with its status. The stage code that runs
is the same module, run as `__main__`, as it would run cold.

A command runs cold (imports everything itself, as without a pipeline) when no server is named in its environment,
when the server cannot be reached, or when the server could not run it exactly as a cold process would: another
working directory (a DVC experiment's temporary copy), or another value of a variable that the preloaded modules
read at import time (PREFECT_*, MLFLOW_*, HF_*, ...).

Lifecycle, as for a cold stage: SIGINT and SIGTERM sent to the command are passed to its child once (the server
runs in a session of its own, so a terminal's Ctrl-C reaches the command only); a command that dies (`kill -9`)
closes its connection, and its child then stops itself as on SIGTERM (then hard after 10 s); the server stops
when the pipeline that started it dies. The stage's timings count from the command's start, so the saving is
measured, not hidden (flows/timings.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

SOCKET_ENV = "DEEPPRUNE_WARM_SOCKET"     # set by the pipeline around `dvc repro`: the server's Unix socket
STARTED_ENV = "DEEPPRUNE_STAGE_STARTED"  # the command's own start (Unix time), sent with it: its timings start there
STAGES = ("sample", "label", "embed", "judge", "judge_lm", "sweep", "ablate", "prune", "online", "transfer",
          "report")
# Variables that the preloaded modules (or the C libraries under them) read once, at import: a command whose values
# differ from the server's runs cold. Others (DVC's own, a stage's parent run id) are read when used.
IMPORT_TIME_PREFIXES = ("PREFECT_", "MLFLOW_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "OMP_", "MKL_",
                        "OPENBLAS_", "CUDA_", "PYTORCH_", "PYTHON", "LD_", "ARROW_", "SQLALCHEMY_")
GRACE_S = 10.0  # a child whose command died: SIGTERM, then a hard exit after this long
_HEADER = struct.Struct("!I")


def _import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


def _send(conn: socket.socket, doc: object) -> None:
    body = json.dumps(doc).encode()
    conn.sendall(_HEADER.pack(len(body)) + body)


def _recv(conn: socket.socket) -> object | None:
    """One length-prefixed JSON message, or None at end of stream."""
    head = _exactly(conn, _HEADER.size)
    if head is None:
        return None
    body = _exactly(conn, _HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def _exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _stage_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """The stage module and its arguments of `python -m flows.<stage> ...` (sys.orig_argv), else None."""
    for idx, arg in enumerate(argv[:-1]):
        if arg == "-m":
            module = argv[idx + 1]
            prefix, _, name = module.partition(".")
            return (module, argv[idx + 2:]) if prefix == "flows" and name in STAGES else None
    return None


# --- the command's side ---------------------------------------------------------------------------------------------

def hand_off() -> None:
    """Run this `python -m flows.<stage>` command in a warm child of the pipeline's server and exit with its status;
    return (and the command goes on cold) when there is no server to take it."""
    path = os.environ.get(SOCKET_ENV)
    command = _stage_command(list(getattr(sys, "orig_argv", [])))
    if not path or command is None:
        return
    module, args = command
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [b"\0"], [0, 1, 2])
        _send(conn, {"module": module, "args": args, "cwd": os.getcwd(),
                     "env": {**os.environ, STARTED_ENV: repr(_process_start())}})
        answer = _recv(conn)
    except OSError:
        answer = None
    if not isinstance(answer, dict) or "pid" not in answer:
        reason = answer.get("cold") if isinstance(answer, dict) else "the warm stage server did not answer"
        print(f"{module}: starting cold ({reason})", file=sys.stderr)
        conn.close()
        return
    sys.exit(_wait(conn, int(answer["pid"]), module))


def _wait(conn: socket.socket, child: int, module: str) -> int:
    """Pass SIGINT and SIGTERM on to the child, and its exit status back as this process's (128 + signal when a
    signal ended it, as a shell reports it)."""
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    from flows.server import stop_with_parent

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    stop_with_parent()  # dvc killed: SIGTERM to this command, which passes it on
    try:
        status = _recv(conn)
    except OSError:
        status = None
    if not isinstance(status, dict):
        print(f"{module}: the warm stage server went away before its child {child} ended", file=sys.stderr)
        return 1
    code = os.waitstatus_to_exitcode(int(status["status"]))
    return 128 - code if code < 0 else code


def _process_start() -> float:
    from flows.timings import process_start

    return process_start()


# --- the server's side ----------------------------------------------------------------------------------------------

def preload() -> None:
    """Import every stage module and what they import lazily, once, in this process."""
    import importlib

    for name in STAGES:
        importlib.import_module(f"flows.{name}")
    import mlflow.tracking  # noqa: F401  (deepprune.tracking imports it on first use)
    import transformers  # noqa: F401


def serve(path: str, root: str) -> None:
    """Listen on `path` first (a command that connects now waits for the preload), import the stages, then fork a
    child per command. Single-threaded (no watcher thread either): a fork copies only the forking thread, and a
    lock another thread held would stay locked in the child."""
    import selectors

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipeline stops this server (SIGTERM) after `dvc repro`
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    preload()
    baseline = dict(os.environ)
    code = _project_code()
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while os.getppid() == parent:  # the pipeline died: stop (running children go on with their commands)
        for _ in selector.select(timeout=0.2):
            conn, _ = listener.accept()
            pid = _accept(conn, root, baseline, code, children, listener, selector)
            if pid:
                children[pid] = conn
            else:
                conn.close()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    _send(conn, {"status": status})
                except OSError:
                    pass
                conn.close()


CODE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # where deepprune/, flows/, tasks/ live


def _project_code() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every project module file (under CODE_ROOT) that this process has imported."""
    prefix = os.path.join(CODE_ROOT, "")
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path).startswith(prefix):
            try:
                stat = os.stat(path)
            except OSError:
                continue
            out[path] = (stat.st_mtime_ns, stat.st_size)
    return out


def _accept(conn, root, baseline, code, children, listener, selector) -> int | None:  # type: ignore[no-untyped-def]
    """Read one command; answer why it runs cold, or fork its child and answer the child's pid."""
    conn.settimeout(10)
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        request = _recv(conn)
    except (OSError, ValueError):
        return None
    try:
        if not isinstance(request, dict) or len(fds) != 3:
            return None
        cold = _why_cold(request, root, baseline, code)
        if cold:
            _send(conn, {"cold": cold})
            return None
        pid = os.fork()
        if pid == 0:
            selector.close()
            listener.close()
            for other in children.values():
                other.close()
            _child(conn, fds, request)  # never returns
        _send(conn, {"pid": pid})
        return pid
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _why_cold(request: dict, root: str, baseline: dict[str, str], code: dict[str, tuple[int, int]]) -> str | None:
    """Why a command must run cold (None: a warm child runs it exactly as a cold process would)."""
    for path, seen in code.items():  # project code edited since the preload: a child would run the old modules
        try:
            stat = os.stat(path)
            now = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            now = None
        if now != seen:
            return f"{os.path.relpath(path, CODE_ROOT)} changed since the warm stage server imported it"
    if os.path.realpath(request.get("cwd", "")) != os.path.realpath(root):
        return f"the warm stage server serves {root}, not {request.get('cwd')}"
    theirs, ours = _import_env(request.get("env", {})), _import_env(baseline)
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        return f"the warm stage server was started with other values of {', '.join(differ[:5])}"
    return None


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """Become the command: its streams, directory, environment and arguments; run its module as __main__."""
    import random
    import runpy
    import threading
    import traceback

    code = 1
    try:
        os.setpgid(0, 0)  # a group of its own: a signal meant for the server's group does not reach it
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        module = request["module"]
        sys.argv = [module, *request["args"]]
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty())
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        random.seed()  # not the server's state, shared by every child
        from flows import server

        server.PARENT_WATCHED_BY = "the command's connection"

        def watch() -> None:  # the command died (its end of the connection closed): stop as on SIGTERM
            try:
                conn.settimeout(None)
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(GRACE_S)
            os._exit(128 + signal.SIGTERM)

        threading.Thread(target=watch, name="stop-with-command", daemon=True).start()
        sys.modules.pop(module, None)  # run afresh as __main__, as `python -m` runs it (its imports stay loaded)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


@contextlib.contextmanager
def warm_stages(root) -> Iterator[str | None]:
    """A server for the stage commands started inside the block (SOCKET_ENV is set for them), stopped with its
    children and its socket at the end, however the block ends. Yields the socket's path, or None (and the
    commands run cold) when the server did not start."""
    import shutil
    import subprocess
    import tempfile

    from deepprune.services import stop_process

    folder = tempfile.mkdtemp(prefix="deepprune-warm-")
    path = os.path.join(folder, "stages.sock")
    proc = subprocess.Popen([sys.executable, "-m", "flows.warm", path, str(root)], cwd=str(root),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = os.path.exists(path)
        if ready:
            os.environ[SOCKET_ENV] = path
        else:
            print("the warm stage server did not start: stages start cold", file=sys.stderr)
        yield path if ready else None
    finally:
        os.environ.pop(SOCKET_ENV, None)
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
