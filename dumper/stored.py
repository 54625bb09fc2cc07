"""Bytes as stored: optional gzip, with size and sha256 computed while writing.

Pure (zlib/hashlib only). The same code reads a stored file back for `verify`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass


class StoredWriter:
    """Compress and checksum a stream of bytes; returns what to store."""

    def __init__(self, compression: str, level: int = 3) -> None:
        self._zip = zlib.compressobj(level, zlib.DEFLATED, 31) if compression == "gzip" else None
        self._sha = hashlib.sha256()
        self.bytes = 0

    def _out(self, data: bytes) -> bytes:
        self._sha.update(data)
        self.bytes += len(data)
        return data

    def add(self, data: bytes) -> bytes:
        return self._out(self._zip.compress(data) if self._zip else data)

    def finish(self) -> bytes:
        """The last stored bytes (gzip trailer); call once, at the end."""
        return self._out(self._zip.flush()) if self._zip else b""

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


@dataclass(frozen=True)
class StoredStats:
    bytes: int
    sha256: str
    newlines: int


def read_stats(chunks: Iterable[bytes], compression: str) -> StoredStats:
    """Size and sha256 of stored bytes, and '\\n' count of their content."""
    sha = hashlib.sha256()
    size = newlines = 0
    unzip = zlib.decompressobj(31) if compression == "gzip" else None
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
        newlines += (unzip.decompress(chunk) if unzip else chunk).count(b"\n")
    if unzip:
        newlines += unzip.flush().count(b"\n")
    return StoredStats(size, sha.hexdigest(), newlines)
