"""MLflow on PostgreSQL for a team (`make mlflow-postgres`): Debian's PostgreSQL with its data directory inside the
project, listening on 127.0.0.1 only, and one `mlflow server` with that database as its backend store and the
project's artifact folder as its artifact destination. The pipeline logs to it through MLFLOW_TRACKING_URI alone.

    python -m flows.team_stores [--pg-port 5433] [--mlflow-port 5000] [--data .postgres]

Runs in the foreground; Ctrl-C or SIGTERM stops MLflow, then PostgreSQL (a fast shutdown: committed runs are
kept), each with every process it started. A `kill -9` of this process sends both servers SIGTERM (parent-death
signal), which stops PostgreSQL; the MLflow server's job consumers can outlive that. The database outlives the servers:
the next start serves the same runs. Authentication is `trust` on 127.0.0.1 (the data is as private as the
machine); for a server other machines reach, give the `mlflow` role a password and put it in the backend URI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from deepprune.services import free_port, service
from flows.server import healthy

ROLE = DATABASE = "mlflow"


class PostgresUnavailable(RuntimeError):
    """Debian's PostgreSQL server binaries are not installed, or cannot run here."""


def postgres_bin() -> Path:
    """The newest Debian PostgreSQL server's bin directory (postgresql package: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise PostgresUnavailable("PostgreSQL's server is not installed (/usr/lib/postgresql/<version>/bin/postgres): "
                                  "sudo apt-get install postgresql")
    return found[-1].parent


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no `postgres` user to run PostgreSQL as") from None
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")  # sbin: often off PATH
    if runuser is None:
        raise PostgresUnavailable("running as root needs util-linux's runuser to run PostgreSQL as `postgres`")
    return [runuser, "-u", "postgres", "--", *cmd]


def _own(data: Path) -> None:
    """An empty data directory PostgreSQL's user owns (mode 700), reachable through its parents."""
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(data, entry.pw_uid, entry.pw_gid)
        for parent in data.parents:  # the postgres user must be able to traverse to it
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    os.chmod(data, 0o700)


def _ready(bin_dir: Path, port: int) -> bool:
    return subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0


def _psql(bin_dir: Path, port: int, sql: str, database: str = "postgres") -> str:
    proc = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, "-d", database,
                           "-tAc", sql], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise PostgresUnavailable(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def postgres(data_root: str | os.PathLike, port: int, log: str | os.PathLike) -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1:port with its data under data_root (initialised on first use), and the
    `mlflow` database in it; yields its SQLAlchemy URI. Stopped when the block ends, however it ends."""
    bin_dir = postgres_bin()
    data = Path(data_root, "data").resolve()
    if not (data / "PG_VERSION").exists():
        if data.exists() and any(data.iterdir()):
            raise PostgresUnavailable(f"{data} is not empty and is not a PostgreSQL data directory")
        _own(data)
        init = subprocess.run(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data), "-U", ROLE,
                                                 "--auth=trust", "-E", "UTF8", "--locale=C"]),
                              capture_output=True, text=True, timeout=300)
        if init.returncode:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-800:]}")
    cmd = _as_postgres_user([str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                             "-c", "unix_socket_directories=", "-c", "fsync=on"])
    # SIGINT is PostgreSQL's fast shutdown (committed transactions stay); sent to the process group, it reaches
    # PostgreSQL itself, not only runuser (which does not pass it on)
    with service(cmd, lambda: _ready(bin_dir, port), 120, "PostgreSQL", log, {**os.environ},
                 error=PostgresUnavailable, grace_s=60.0, stop_signal=signal.SIGINT):
        if _psql(bin_dir, port, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            _psql(bin_dir, port, f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg2://{ROLE}@127.0.0.1:{port}/{DATABASE}"  # SQLAlchemy 2.1 defaults to psycopg 3


@contextlib.contextmanager
def mlflow_on_postgres(data_root: str | os.PathLike, pg_port: int, mlflow_port: int,
                       artifacts: str | os.PathLike) -> Iterator[str]:
    """PostgreSQL, then `mlflow server` on it; yields the tracking URI (http://127.0.0.1:mlflow_port)."""
    logs = Path(data_root)
    with postgres(data_root, pg_port, logs / "postgres.log") as backend:
        url = f"http://127.0.0.1:{mlflow_port}"
        cmd = [shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow", "server",
               "--backend-store-uri", backend, "--artifacts-destination", str(Path(artifacts).resolve()),
               "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "2"]
        # on a database backend the server starts job consumers (huey) that outlive a SIGTERM of the server alone:
        # `service` stops its whole process group
        with service(cmd, lambda: healthy(url), 180, "the MLflow server", logs / "mlflow.log", {**os.environ},
                     grace_s=15.0):
            yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.team_stores", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=".postgres", help="PostgreSQL's data and the logs (inside the project)")
    parser.add_argument("--pg-port", type=int, default=5433)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--artifacts", default=".mlflow/artifacts", help="the MLflow server's artifact destination")
    args = parser.parse_args(argv)
    pg_port = args.pg_port or free_port()  # 0: any free port
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored (flows.server)
    try:
        with mlflow_on_postgres(args.data, pg_port, args.mlflow_port, args.artifacts) as url:
            print(f"MLflow on PostgreSQL (127.0.0.1:{pg_port}, data in {Path(args.data, 'data')}): {url}\n"
                  f"log to it with:  export MLFLOW_TRACKING_URI={url}   (Ctrl-C stops both servers)", flush=True)
            while not stop:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except PostgresUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
