"""Text and JSON files written whole or not at all: a temporary file beside the target, then
one rename over it.

A reader (the dashboard, a resumed run, the next stage, another process) sees the old file or
the new one, never half of one, and a crash leaves no half-written data file or stage record
for a later run to trust. The one implementation for the data files the tasks and Hugging Face
downloads write, the stage records and the run's JSON outputs (`config.json`,
`calibration.json`, `fit.json`); the top-k store, the trainers and the model builder write
their own binary outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8, "\\n" line ends on every system) to `path`, creating its folder.

    The temporary file has a name of its own in the same folder (a rename is atomic only
    within one file system; two writers never share a temporary file) and is removed if the
    write fails. File and rename are both fsync'ed: a stage record must not survive a power
    loss that its outputs (or its own content) did not. The file is made 0644, since
    `mkstemp` creates 0600 and data files and run records are meant to be shared.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself
    finally:
        os.close(folder)


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented JSON with sorted keys (what every run record holds), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
