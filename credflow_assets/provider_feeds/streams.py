"""One pass from a decrypted file to S3: decompress, count CSV records and upload together.

A single file (plain, or gzip of one file) is never written out decompressed: `UploadSource`
hands S3's multipart upload its parts straight from the decompressor, so the decompression
of part N+1 overlaps the upload of part N, and the CSV record count is taken from the same
bytes. Memory stays bounded: the decompressor yields at most `CHUNK` bytes per step
(`max_length`, also for a decompression bomb) and the upload holds a few parts.

Any error while reading (corrupt or truncated gzip, the limits of limits.py) is raised inside
the upload, which then aborts its multipart upload: nothing partial lands.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

from credflow_assets.provider_feeds.limits import ExpansionLimit
from credflow_assets.provider_feeds.unpack import (
    CHUNK,
    GZIP_MAGIC,
    CorruptArchive,
    _is_tar,
    _strip_gz,
)

try:
    # ISA-L's inflate (a dependency, setup.py) with zlib's interface: 3 times zlib's speed
    # on rosters (870 against 260-290 MiB/s out, RESULTS.md §1, session 9), and the landing
    # decompresses 2.7 times what it downloads. An install that predates it uses zlib.
    from isal import isal_zlib as inflate
except ImportError:  # pragma: no cover - the same results, slower
    inflate = zlib

GZIP_WBITS = 31  # zlib: a gzip header and trailer around the deflate data
INFLATE_ERRORS = (zlib.error, inflate.error)
TAR_HEAD = 512


def single_file_name(path: Path, name: str) -> Optional[tuple[str, str]]:
    """(`gzip` or `none`, the inner file's name) when `path` holds one file that can stream;
    None for archives (tar, tar.gz, zip), which `unpack.unpack` extracts to disk."""
    with open(path, "rb") as stream:
        head = stream.read(TAR_HEAD)
    return single_file_of_head(head, name, lambda: gunzip_chunks(path, name,
                                                                 limit=ExpansionLimit(CHUNK)))


def single_file_of_head(head: bytes, name: str, inner) -> Optional[tuple[str, str]]:
    """`single_file_name` from the file's first `TAR_HEAD` bytes or more; `inner()` gives the
    decompressed chunks when it is gzip (the first one is enough to tell a tar.gz)."""
    lowered = name.lower()
    if head.startswith(GZIP_MAGIC) or lowered.endswith((".gz", ".tgz")):
        inner_name = _strip_gz(name)
        try:
            first = next(inner(), b"")
        except CorruptArchive:
            first = b""  # reported by the upload itself, with the stage and the cause
        return None if _is_tar(first, inner_name.lower()) else ("gzip", inner_name)
    if lowered.endswith(".zip") or _is_tar(head, lowered):
        return None
    return "none", name


def gunzip_chunks(path: Path, name: str, *, limit: ExpansionLimit) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file: `gunzip_stream` of the file's chunks."""
    return gunzip_stream(file_chunks(path), name, limit=limit)


def gunzip_stream(compressed: Iterator[bytes], name: str, *,
                  limit: ExpansionLimit) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (every member, as gunzip), `CHUNK` at most each.

    Raises `ExtractionLimitExceeded` before a chunk passes `limit`, and `CorruptArchive` for
    corrupt or truncated data. Zero padding after the last member is ignored, as Python's gzip
    module does. What `compressed` raises (gpg's verdict) passes through.
    """
    budget = limit.budget(f"the decompressed content of {name}")
    decompressor, started, pending = inflate.decompressobj(GZIP_WBITS), False, b""
    try:
        while True:
            if not pending:
                pending = next(compressed, b"")
                if not pending:
                    if started and not decompressor.eof:
                        raise CorruptArchive(
                            f"{name}: truncated compressed data (the gzip stream ends "
                            "before its end-of-stream marker)")
                    return
            if decompressor.eof:  # a member ended: padding or the next member follows
                pending = pending.lstrip(b"\x00")
                if not pending:
                    continue
                decompressor, started = inflate.decompressobj(GZIP_WBITS), False
            started = True
            data = decompressor.decompress(pending, CHUNK)
            pending = decompressor.unused_data if decompressor.eof \
                else decompressor.unconsumed_tail
            if data:
                budget.take(len(data))
                yield data
    except INFLATE_ERRORS as error:
        raise CorruptArchive(
            f"{name}: corrupt compressed data ({error})") from None
    finally:
        close = getattr(compressed, "close", None)
        if close is not None:
            close()  # a generator: its file, or the gpg it reads, is let go now


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


class UploadSource:
    """A non-seekable readable stream for `upload_fileobj`, over an iterator of chunks.

    `read(n)` returns exactly n bytes until the end (S3 refuses parts under 5 MiB other than
    the last, and s3transfer makes a part of whatever one read returns). `head(n)` looks at
    the first bytes without consuming them. Every byte handed out goes to `observe` (the CSV
    record counter) in order; `size` counts them and `seconds` is the time spent producing
    them (decompressing and counting), which overlaps the upload of earlier parts.
    """

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffered: list[bytes] = []
        self._buffered_size = 0
        self.observe: Optional[Callable[[bytes], None]] = None
        self.size = 0
        self.seconds = 0.0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def head(self, amount: int) -> bytes:
        started = time.monotonic()
        self._fill(amount)
        self.seconds += time.monotonic() - started
        return b"".join(self._buffered)[:amount]

    def read(self, amount: int = -1) -> bytes:
        started = time.monotonic()
        self._fill(amount)
        pieces, self._buffered, self._buffered_size = self._buffered, [], 0
        if 0 <= amount < sum(len(piece) for piece in pieces):
            # Split one piece (at most CHUNK bytes), not the whole part: fewer copies.
            taken, count = 0, 0
            while taken + len(pieces[count]) <= amount:
                taken += len(pieces[count])
                count += 1
            cut = amount - taken
            rest = [pieces[count][cut:]] + pieces[count + 1:]
            pieces = pieces[:count] + [pieces[count][:cut]]
            self._buffered, self._buffered_size = rest, sum(len(piece) for piece in rest)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.size += len(data)
        if self.observe is not None and data:
            self.observe(data)
        self.seconds += time.monotonic() - started
        return data

    def _fill(self, amount: int) -> None:
        while amount < 0 or self._buffered_size < amount:
            chunk = next(self._chunks, b"")
            if not chunk:
                return
            self._buffered.append(chunk)
            self._buffered_size += len(chunk)
