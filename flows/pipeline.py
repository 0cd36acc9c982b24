"""The whole chain as one Prefect flow that runs `dvc repro`, so DVC's cache decides what reruns.

    python -m flows.pipeline                 # run once (what `make run` does after set-up)
    python -m flows.pipeline --profile paper # the paper profile (profiles/paper.yaml) as a DVC experiment
    python -m flows.pipeline --serve         # serve as a deployment: start runs from the Prefect UI
    python -m flows.pipeline --write-params cluster.task_runner=dask  # change params.yaml (make use-cluster)

Each stage still runs as its own flow run (DVC starts `python -m flows.<stage>`); they are tied together by
an MLflow parent run in experiment 'deepprune/pipeline' that every stage run points to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow

from deepprune import paths
from deepprune.config import ConfigError, Params, load_params
from deepprune.io import atomic_open
from deepprune.services import Unreachable, stop_process
from deepprune.tracking import fail_abandoned_runs, process_tags, require_store, start_run
from flows import ROOT, artifact_root
from flows._stage import PARENT_RUN_ENV, PIPELINE_FLOW_RUN_ENV, git_commit
from flows.server import servers, terminate_as_interrupt
from flows.timings import format_table, process_start, stage_timings, summary
from flows.warm import warm_stages


def _dvc(*args: str) -> None:
    """Run a DVC command; on Ctrl-C or SIGTERM, pass SIGINT on to it and give its stage 10 s to close its runs."""
    cmd = [sys.executable, "-m", "dvc", *args]
    print("$", " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        stop_process(proc)
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def params_with_overrides(set_params: list[str] | None, path: Path = ROOT / "params.yaml") -> Params:
    """params.yaml with `dvc exp run -S` overrides applied by DVC's own code to a copy, validated before any stage
    runs: a bad key or value is an error naming it, and the workspace's params.yaml is never touched."""
    if not set_params:
        return load_params(path)
    with tempfile.TemporaryDirectory(prefix="deepprune-params-") as tmp:
        return _overridden(set_params, path, Path(tmp) / "params.yaml")


def _overridden(set_params: list[str], path: Path, copy: Path) -> Params:
    """`path` with the overrides applied by DVC's own code, written to `copy` and validated."""
    from dvc.utils.hydra import apply_overrides

    shutil.copyfile(path, copy)
    try:
        apply_overrides(copy, list(set_params))
        return load_params(copy)
    except ConfigError as exc:
        raise ConfigError(f"{exc}".replace(str(copy), f"{path} with set_params {set_params}")) from None
    except Exception as exc:  # DVC's override grammar: an unknown key or a malformed override
        cause = f" ({str(exc.__cause__).splitlines()[0]})" if exc.__cause__ else ""
        raise ConfigError(f"set_params {set_params}: {exc}{cause}") from None


def write_params(overrides: list[str], path: Path = ROOT / "params.yaml") -> Params:
    """params.yaml itself with `section.key=value` scalars set (`make use-cluster`): each value changed on its own line
    (comments and layout kept; DVC's writer would reflow the whole file), the result validated, then swapped in
    whole; a bad override changes nothing."""
    from ruamel.yaml import YAML

    from deepprune.config import read_params, set_scalars

    updates: dict[str, object] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"--write-params {override!r}: an override is section.key=value")
        updates[key] = YAML(typ="safe", pure=True).load(value)  # as params.yaml would read it: null, 2, tcp://...
    with open(path, encoding="utf-8", newline="") as handle:  # CRLF lines stay CRLF
        text = set_scalars(handle.read(), updates)
    expected = read_params(path)
    for key, value in updates.items():
        section, _, name = key.partition(".")
        expected[section][name] = value
    with tempfile.TemporaryDirectory(prefix="deepprune-params-") as tmp:
        copy = Path(tmp) / "params.yaml"
        copy.write_text(text, encoding="utf-8")
        if read_params(copy) != expected:  # a value that YAML reads back as something else
            raise ConfigError(f"--write-params {' '.join(overrides)}: params.yaml would not read back as set")
        try:
            params = load_params(copy)
        except ConfigError as exc:
            raise ConfigError(f"{exc}".replace(str(copy), f"{path} with {' '.join(overrides)}")) from None
    with atomic_open(path) as handle:
        handle.write(text)
    return params


@flow(name="pipeline", log_prints=True)
def pipeline_flow(targets: list[str] | None = None, force: bool = False, set_params: list[str] | None = None) -> None:
    """`dvc repro` (or `dvc exp run --temp` with params overrides) under one MLflow parent run.

    An experiment runs in a temporary copy of the repository (`--temp`): its params and results live in the
    experiment (`dvc exp show`, `dvc exp apply`), and the workspace's params.yaml stays as it was, also when the
    experiment fails."""
    from prefect.runtime import flow_run

    params_with_overrides(set_params)  # refuse bad params before any stage runs

    tags = {"git_commit": git_commit(ROOT), "prefect_flow_run_id": str(flow_run.id or "none"), "kind": "pipeline",
            **process_tags()}
    artifacts = artifact_root()
    fail_abandoned_runs("deepprune/pipeline", {"kind": "pipeline"})
    with start_run("deepprune/pipeline", f"pipeline {flow_run.name or ''}".strip(), tags=tags,
                   artifact_root=artifacts) as run:
        os.environ[PARENT_RUN_ENV] = run.run_id
        os.environ[PIPELINE_FLOW_RUN_ENV] = str(flow_run.name or flow_run.id or "")
        try:
            if set_params:  # an experiment: DVC records it beside the workspace's results
                _dvc("exp", "run", "--temp", *[a for p in set_params for a in ("-S", p)], *(targets or []))
            else:
                with warm_stages(ROOT):  # stage commands run in forks of one process that imported them all
                    _dvc("repro", *(["--force"] if force else []), *(targets or []))
        finally:
            os.environ.pop(PARENT_RUN_ENV, None)
            os.environ.pop(PIPELINE_FLOW_RUN_ENV, None)
        report_timings(run)


def report_timings(run) -> None:
    """Print and save the table of where this run's time went (flows/timings.py): reports/timings.md, also an
    artifact of the pipeline's MLflow run, whose metrics get the totals."""
    started = process_start()
    rows = stage_timings(ROOT, since=started)
    total = time.time() - started
    table = format_table(rows, total)
    out = ROOT / paths.timings_table()
    with atomic_open(out) as handle:
        handle.write(f"# Where the time went\n\n{table}\n")
    run.log_artifact(out)
    run.log_metrics({f"pipeline/{key}": value for key, value in summary(rows, total).items()})
    print(f"{table}\n(saved to {paths.timings_table()})")


PROFILES = ROOT / "profiles"


def _override_value(value: object) -> str:
    """A params value in the override grammar of `dvc exp run -S` (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if text.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum() \
        else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def profile_overrides(name: str, folder: Path = PROFILES) -> list[str]:
    """The `dvc exp run -S` overrides of a named profile (profiles/<name>.yaml: params keys, dotted, and values)."""
    import yaml

    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"--profile {name}: no {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}; "
                          f"profiles: {', '.join(known) or 'none'}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a profile is a mapping of params keys to values")
    return [f"{key}={_override_value(value)}" for key, value in doc.items()]


def main(argv: list[str] | None = None) -> None:
    """One Prefect server for the whole run (PREFECT_API_URL's, or one started here and stopped at the end):
    every stage DVC starts reports to it instead of starting a temporary server of its own. Bad params and a
    tracking store that does not answer end it before any stage runs, with a one-line error."""
    argv = sys.argv[1:] if argv is None else argv
    terminate_as_interrupt()
    try:
        if "--write-params" in argv:  # change params.yaml and stop (make use-cluster): every later word an override
            overrides = argv[argv.index("--write-params") + 1:]
            if not overrides:
                raise ConfigError("--write-params needs overrides, key=value (the grammar of dvc exp run -S)")
            write_params(overrides)
            print(f"params.yaml: {' '.join(overrides)}")
            return
        profile = argv[argv.index("--profile") + 1] if "--profile" in argv[:-1] else None
        targets = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--profile")]
        set_params = profile_overrides(profile) if profile else None
        tracking = load_params(ROOT / "params.yaml").tracking
        require_store(tracking)
        with servers(tracking):  # Prefect and MLflow servers started at once
            if "--serve" in argv:
                pipeline_flow.serve(name="deepprune-pipeline", tags=["deepprune"])
            else:
                pipeline_flow(targets=targets or None, force="--force" in argv, set_params=set_params)
    except (ConfigError, Unreachable) as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("pipeline: interrupted; finished stages are kept and `make run` resumes", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
