"""The SP's container files: content-addressed by SHA-256 under the settings' `container_dir` (issue 9, item 7).

A catalog row keeps only the path and the hash; downloads stream the file. Files are written to a temporary name
in the same folder, then renamed (atomic), so a half-written file never has a content address. The same bytes
published twice are one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from offchain.core.errors import ContainerTooLarge

CHUNK = 1024 * 1024


class ContainerFiles:
    """Content-addressed container files under `root` (root/ab/abcdef...: the hex SHA-256)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def temp_file(self) -> tuple[int, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        return fd, Path(name)

    def write_chunks(self, chunks: Iterable[bytes]) -> tuple[Path, bytes]:
        """Write `chunks` to a temporary file (ContainerTooLarge past `max_bytes`); (temp path, sha256)."""
        fd, path = self.temp_file()
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ContainerTooLarge(f"container over {self.max_bytes} bytes", maximum=self.max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.digest()

    async def write_stream(self, chunks: AsyncIterator[bytes]) -> tuple[Path, bytes]:
        """`write_chunks` for an async stream (an aiohttp request body)."""
        fd, path = self.temp_file()
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ContainerTooLarge(f"container over {self.max_bytes} bytes", maximum=self.max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.digest()

    def adopt(self, temp: Path, sha256: bytes) -> Path:
        """Move a verified temporary file to its content address (the existing file when already there)."""
        final = self.path_of(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            temp.unlink(missing_ok=True)
        else:
            os.replace(temp, final)
        return final

    def path_of(self, sha256: bytes) -> Path:
        name = sha256.hex()
        return self.root / name[:2] / name


__all__ = ["ContainerFiles", "CHUNK"]
