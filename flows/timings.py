"""Where a run's time went: every stage process writes its timings file (flows._stage, `paths.timings`), and the
pipeline ends with this table of wall time per stage and the share spent outside the stage's own work.

A stage's own work is what runs inside its MLflow run (stage_run); its overhead is the rest of its process:
interpreter start-up and imports, params validation, the Prefect flow run and the MLflow run set up and closed.
The pipeline's own row is what no stage process covers: its start-up, the Prefect server it starts, and DVC
between stages (hashing, caching outputs, checking what changed)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepprune import paths


def process_start(pid: int | str = "self") -> float:
    """When a process started (Unix time, to 1/100 s). psutil's create_time adds the start's clock ticks to the boot
    time that /proc/stat rounds down to a whole second, so on a given machine every start it gives is early by the
    same fraction of a second (0.57 s on this project's build machine), which a stage's overhead would count; here
    the boot time is the wall clock less the boot clock (CLOCK_BOOTTIME, which the start's ticks count on)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rpartition(b")")[2].split()  # after the command name: any bytes, spaces too
    ticks = int(fields[19])  # field 22, starttime, counted from the third field on
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def stage_timings(root: Path, since: float) -> list[dict[str, Any]]:
    """The timings files of the stage processes that started at or after `since` (a Unix time), in start order."""
    folder = root / Path(paths.timings("x", None)).parent
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if doc.get("clock", {}).get("process_start", 0.0) >= since:
            rows.append(doc)
    return sorted(rows, key=lambda d: d["clock"]["process_start"])


def summary(rows: Sequence[Mapping[str, Any]], total: float) -> dict[str, float]:
    """Totals of a run: wall time, the stages' own work, and the share of the wall time spent outside it."""
    work = sum(r["work_seconds"] for r in rows)
    stages = sum(r["wall_seconds"] for r in rows)
    return {"total_seconds": total, "work_seconds": work, "stage_overhead_seconds": stages - work,
            "outside_stages_seconds": max(total - stages, 0.0),
            "overhead_share": (total - work) / total if total > 0 else float("nan")}


def format_table(rows: Sequence[Mapping[str, Any]], total: float) -> str:
    """A markdown table: one row per stage process, the pipeline's own time, and the total."""
    lines = ["| stage | wall s | own work s | overhead s | overhead share |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        wall, work = r["wall_seconds"], r["work_seconds"]
        lines.append(f"| {r['stage']} | {wall:.1f} | {work:.1f} | {wall - work:.1f} | {(wall - work) / wall:.0%} |"
                     if wall > 0 else f"| {r['stage']} | {wall:.1f} | {work:.1f} | 0.0 | - |")
    s = summary(rows, total)
    lines.append(f"| pipeline start-up, Prefect server, DVC between stages | {s['outside_stages_seconds']:.1f} | 0.0 | "
                 f"{s['outside_stages_seconds']:.1f} | 100% |")
    lines.append(f"| **total** ({len(rows)} stage runs) | {total:.1f} | {s['work_seconds']:.1f} | "
                 f"{total - s['work_seconds']:.1f} | {s['overhead_share']:.1%} |")
    return "\n".join(lines)
