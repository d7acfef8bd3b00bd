"""`device use` destinations (offchain/device/delivery.py): refused before any charge, temp file + rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from offchain.core.errors import ConfigError
from offchain.device.delivery import Destination


def test_missing_folder_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Destination.open(str(tmp_path / "nope" / "song.mp3"))
    assert info.value.field == "out" and info.value.directory == str(tmp_path / "nope")


def test_directory_and_absent_out_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Destination.open(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        Destination.open(None)
    assert info.value.field == "out"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError) as info:
            Destination.open(str(folder / "a.bin"))
        assert info.value.directory == str(folder)
    finally:
        folder.chmod(0o700)


def test_delivery_renames_into_place_and_abort_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    dest = Destination.open(str(out))
    assert not out.exists()  # nothing visible before delivery
    dest.deliver(b"plain")
    assert out.read_bytes() == b"plain" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    dest2 = Destination.open(str(tmp_path / "b.bin"))
    dest2.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
