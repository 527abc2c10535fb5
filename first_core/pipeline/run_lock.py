"""The run directory's lock: one process at a time in a run directory.

Two runs in one folder would overwrite each other's stage records and outputs, so whoever
runs stages there (a pipeline's run, the demo's pretrained-coverage step) holds an exclusive
`filelock` on `<run dir>/.lock` first, and a second one stops at once with a message
instead of waiting behind the first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FirstError


def lock_run_dir(run_dir: Path):
    """An exclusive lock on `run_dir` (release it when done), or a `FirstError` if another
    run holds it."""
    from filelock import FileLock, Timeout  # lazily: the dashboard never takes the lock
    path = run_dir / ".lock"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FirstError(f"{run_dir}: another run is using this run directory (lock file "
                         f"{path}); wait for it to finish, or use another `name`") from None
    return lock
