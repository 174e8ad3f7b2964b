"""A gzip reader that reports damage, for reading a .tar.gz in one pass.

Python's tarfile in stream mode ('r|gz') checks neither the gzip CRC nor
whether data follows a member header it could not parse (it just ends the
archive there), so a damaged archive reads as a shorter, complete one. The
VGGSound part 08 on Hugging Face is such a file (Loie/VGGSound, discussion
#1). ``CheckedGzipReader`` is what archives.extract(stream=True) feeds to
tarfile instead.
"""

from __future__ import annotations

import zlib

CHUNK = 1 << 20
FEED = 1 << 14


class GzipDamage(Exception):
    """The compressed stream is truncated or corrupt at this point."""


class CheckedGzipReader:
    """Decompresses a .gz file as tarfile reads it, checking what tarfile's own 'r|gz' does not.

    zlib checks every gzip member's CRC and length, a file that stops inside a
    member is reported as truncated, and data the tar reader left behind is
    inspected by drain(). Bytes decoded before the damage are handed out
    first, so every tar member that was complete survives.
    """

    def __init__(self, handle):
        self.handle = handle
        self.inflate = zlib.decompressobj(31)  # gzip wrapper, CRC-checked
        self.fed = False
        self.buffer = bytearray()
        self.compressed_read = 0
        self.damage: str | None = None
        self.finished = False

    def read(self, size: int = -1) -> bytes:
        while not self.finished and (size < 0 or len(self.buffer) < size):
            self._inflate_more()
        if not self.buffer and self.damage:
            raise GzipDamage(self.damage)
        size = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        out = bytes(self.buffer[:size])
        del self.buffer[:size]  # cheap: bytearray drops a prefix without moving the rest
        return out

    def drain(self) -> None:
        """Read past the tar's end-of-archive blocks to the end of the file; only zeros may follow."""
        while block := self.read(CHUNK):
            if block.strip(b"\0"):
                raise GzipDamage("data follows the tar end-of-archive marker (a damaged member header ended the archive early)")

    def _inflate_more(self) -> None:
        data = self.handle.read(CHUNK)
        self.compressed_read += len(data)
        if not data:
            if self.fed and not self.inflate.eof:
                self.damage = f"the gzip stream is truncated (the file ends after {self.compressed_read} bytes inside it)"
            self.finished = True
            return
        # Small slices: zlib discards the output of a call that fails, so a slice is what damage costs.
        for offset in range(0, len(data), FEED):
            if not self._feed(data[offset : offset + FEED], self.compressed_read - len(data) + offset):
                return

    def _feed(self, data: bytes, position: int) -> bool:
        while data:
            if self.inflate.eof:  # concatenated gzip members; trailing zero padding is allowed (as gzip -d does)
                if not data.strip(b"\0"):
                    return True
                self.inflate, self.fed = zlib.decompressobj(31), False
            try:
                self.buffer += self.inflate.decompress(data)
            except zlib.error as exc:
                self.damage = f"invalid compressed data within bytes {position}-{position + len(data)} ({exc})"
                self.finished = True
                return False
            self.fed = True
            data = self.inflate.unused_data if self.inflate.eof else b""
        return True
