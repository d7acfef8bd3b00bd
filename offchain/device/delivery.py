"""Where `clearhouse device use` puts the plaintext: checked and opened before anything is charged, written to a
temporary file in the destination's own folder and renamed into place, or streamed to stdout for `--out -`.

It does not charge or decrypt (the secure module does); it only makes sure the one failure left after the charge
is a full disk or a crash mid-write, never a missing folder, a read-only folder or a directory in the way.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from offchain.core.errors import PathError, SettingError

STDOUT = "-"


class UsesContent(Protocol):
    """What delivery needs of a device: one offline use (charge, sign, decrypt) returning the plaintext."""

    def use(self, content_id: bytes, version: int) -> bytes: ...


@dataclass
class Destination:
    """An opened destination: `final` (None for stdout) and the temporary file beside it."""

    final: Path | None
    _temp: Path | None
    _handle: BinaryIO

    @classmethod
    def open(cls, out: str | None) -> Destination:
        """Check and open `out` before the fee is charged: PathError(field="out") when it cannot be written."""
        if out is None:
            raise SettingError("`device use` needs --out PATH (or --out - for stdout): without it the content would "
                               "be charged and thrown away", field="out")
        if out == STDOUT:
            return cls(None, None, sys.stdout.buffer)
        final = Path(out).expanduser().absolute()
        folder = final.parent
        if final.is_dir():
            raise PathError(f"--out {final} is a directory; name a file", field="out", directory=str(final))
        if not folder.is_dir():
            raise PathError(f"--out folder {folder} does not exist", field="out", directory=str(folder))
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=folder)
        except OSError as exc:
            raise PathError(f"cannot write in {folder}: {exc.strerror}", field="out",
                            directory=str(folder)) from None
        return cls(final, Path(temp), os.fdopen(fd, "wb"))

    def deliver(self, plaintext: bytes) -> None:
        """Write, flush and (for a file) fsync the temporary file, then rename it over `final`."""
        self._handle.write(plaintext)
        self._handle.flush()
        if self.final is None:
            return
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._temp, self.final)  # type: ignore[arg-type]

    def abort(self) -> None:
        """Drop the temporary file (nothing was delivered)."""
        if self.final is None:
            return
        self._handle.close()
        if self._temp is not None and self._temp.exists():
            self._temp.unlink()


def deliver_use(destination: Destination, device: UsesContent, content_id: bytes, version: int) -> int:
    """Use the content into an already opened `destination`: any failure of the use itself (not downloaded,
    wrong device, tampered container, allowance exceeded, renewal pending, expired log) happens before the
    secure module's charge commits, so the temporary file is dropped and nothing is charged. Returns the bytes
    delivered. A failure while writing after the charge (a full disk) leaves the charge: the limit this narrows."""
    try:
        plaintext = device.use(content_id, version)
    except BaseException:
        destination.abort()
        raise
    destination.deliver(plaintext)
    return len(plaintext)


__all__ = ["Destination", "STDOUT", "UsesContent", "deliver_use"]
