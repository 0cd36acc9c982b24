"""Prefect tasks: thin, typed wrappers that each call one core function. DVC is the cache, so Prefect's
input-hashing cache is off (hashing thousands of traces would cost more than the work); retries are set
only on tasks that do I/O, and only for errors that can pass (a missing file or a bad record will not)."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

PERMANENT_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError,
                    KeyError, TypeError)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed I/O task unless its error is one that a retry cannot fix."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_if_transient}

__all__ = ["IO_RETRIES", "NO_CACHE", "retry_if_transient"]
