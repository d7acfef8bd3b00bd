"""A file another process polls (the kept demo's state file, the network file, the CA index, a device's pending
request) is replaced whole: a write that fails part-way leaves the old content and no temporary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offchain.core.files import write_atomically


def test_a_write_that_fails_part_way_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "demo-state.json"
    write_atomically(path, json.dumps({"demo_pid": 1}))
    assert json.loads(path.read_text()) == {"demo_pid": 1}  # positive control
    with pytest.raises(UnicodeEncodeError):
        write_atomically(path, '{"demo_pid": 2, "note": "' + "x" * 65_536 + '\udc80"}')  # fails after 64 KiB
    assert json.loads(path.read_text()) == {"demo_pid": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-state.json"]


def test_the_parent_folder_is_made_and_the_new_content_replaces_the_old(tmp_path: Path) -> None:
    path = tmp_path / "var" / "demo-latest.json"
    write_atomically(path, "one")
    write_atomically(path, "two")
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["demo-latest.json"]
