"""first_core.atomic_files: data files and run records land whole or not at all."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from first_core.atomic_files import write_json_atomic, write_text_atomic


def test_records_and_config_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    write_json_atomic(tmp_path / "stages" / "x.json", {"a": 1})
    assert len(synced) == 2  # the file, then its folder (the rename)
    assert json.loads((tmp_path / "stages" / "x.json").read_text()) == {"a": 1}


def test_json_is_indented_with_sorted_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"b": 1, "a": Path("p")})
    assert path.read_bytes() == b'{\n  "a": "p",\n  "b": 1\n}'


def test_text_is_utf8_with_newlines_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "d" / "train.jsonl"
    write_text_atomic(path, "é\nb\n")
    assert path.read_bytes() == "é\nb\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]


@pytest.mark.parametrize("write", [lambda p: write_json_atomic(p, {"new": 1}),
                                   lambda p: write_text_atomic(p, "new")])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write) -> None:
    path = tmp_path / "x.json"
    path.write_text("old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
