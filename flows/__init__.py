"""Prefect flows, one per DVC stage. Importing this package pins every store inside the project.

Prefect's home, the MLflow store and its artifacts live under the project root (absolute paths, git-ignored),
so nothing leaks into the user's home. `dvc exp run --queue/--temp` runs stages in a copy of the repository
under `<repo>/.dvc/tmp/exps/`; there the stores of the real repository are used, so every experiment lands
in the one MLflow store and the one Prefect database the UIs show. Variables already set win.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path


def project_root(here: Path | None = None) -> Path:
    """The repository that owns the stores (the real one, also from inside a DVC experiment copy): of this code,
    or of the folder `here`."""
    here = (here or Path(__file__).parent.parent).resolve()
    parts = here.parts
    for idx in range(len(parts) - 3):
        if parts[idx:idx + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:idx])
    return here


ROOT = project_root()
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / '.mlflow' / 'mlflow.db'}")
# New experiments keep their artifacts in the project's folder, unless MLFLOW_TRACKING_URI names a tracking server of
# the user's (a team's): that server stores artifacts in its own destination and serves them to every client. (The
# project's own server for a run, flows.server.mlflow_server, is started after this, with this folder as its
# destination, so its stages keep the folder.)
if urllib.parse.urlsplit(os.environ["MLFLOW_TRACKING_URI"]).scheme not in ("http", "https"):
    os.environ.setdefault("DEEPPRUNE_MLFLOW_ARTIFACTS", str(ROOT / ".mlflow" / "artifacts"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
(ROOT / ".mlflow").mkdir(exist_ok=True)


def artifact_root() -> str | None:
    """Where a new MLflow experiment keeps its artifacts: the project's folder, or None (the tracking server's own
    destination) when MLFLOW_TRACKING_URI names a server of the user's."""
    return os.environ.get("DEEPPRUNE_MLFLOW_ARTIFACTS")

if os.environ.get("DEEPPRUNE_WARM_SOCKET"):  # a stage command under `make run`: run it in a warm child (flows/warm.py)
    from flows.warm import hand_off

    hand_off()
