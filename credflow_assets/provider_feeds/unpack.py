"""Pure file transforms: decompress and extract safely, detect types, count CSV rows.

Single files (plain, or gzip of one file) are not decompressed to disk by the landing: see
`streams.py`. `unpack` extracts archives, and is the reference for what a single file holds.

Everything streams in 1 MiB chunks between files on disk; nothing holds a whole file in memory.

Safe extraction. Archive members are never extracted with `tarfile.extract`/`zipfile.extract`:
each regular member is streamed into a file of our own naming (`out_dir/00000`, `00001`, …),
so no member name can point a write anywhere. Member names are still checked, because they
become S3 keys: an absolute path, a `..` component, a symbolic or hard link, a device file,
a FIFO or a duplicate name refuses the whole archive with an error naming the member, before
anything is uploaded (the caller uploads only after `unpack` returns).

Decompression bombs. `limit` (limits.py) bounds the bytes one source file may expand to: it
is counted on the decompressed gzip stream and on the bytes written per archive, whatever the
archive headers claim (a header claiming too much is refused before reading), and a stage
stops before the bytes that pass it are written.
"""

from __future__ import annotations

import gzip
import io
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from credflow_assets.provider_feeds.limits import Budget, ExpansionLimit, ExtractionLimitExceeded

__all__ = ["ExtractionLimitExceeded"]  # raised here too; limits.py defines it

CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
HEAD_BYTES = 8192

CATEGORIES = ("csv", "pdf", "xml", "other")
CONTENT_TYPES = {
    "csv": "text/csv",
    "pdf": "application/pdf",
    "xml": "application/xml",
    "other": "application/octet-stream",
}
ENCRYPTED_SUFFIXES = (".gpg", ".pgp", ".asc")


class UnpackError(Exception):
    """Decompression or extraction failed; the message names the member and the cause."""


class UnsafeMember(UnpackError):
    """An archive member with an absolute path, `..`, a link, a device file or a duplicate.
    `member` is its name as the archive gives it, `reason` why it is refused (the error
    report's column and rule)."""

    def __init__(self, member: str, reason: str):
        self.member, self.reason = member, reason
        super().__init__(f"archive member {member!r} refused: {reason}")


class CorruptArchive(UnpackError):
    """Truncated or corrupt gzip, tar or zip data."""


@dataclass(frozen=True)
class Extracted:
    name: str  # the logical name: the file's name, or the member's path inside the archive
    path: Path  # where its bytes are on local disk
    size: int


# ------------------------------------------------------------------------------ encryption


def looks_encrypted(path: Path, name: str) -> bool:
    """An OpenPGP message by extension (`.gpg`, `.pgp`, `.asc`) or by its first packet."""
    if name.lower().endswith(ENCRYPTED_SUFFIXES):
        return True
    with open(path, "rb") as stream:
        head = stream.read(64)
    if head.startswith(b"-----BEGIN PGP MESSAGE-----"):
        return True
    if not head or not head[0] & 0x80:
        return False
    first = head[0]
    tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F
    # Public-key or symmetric session key, or an encrypted data packet, opens a message.
    return tag in {1, 3, 18, 20}


def decrypted_name(name: str) -> str:
    lowered = name.lower()
    for suffix in ENCRYPTED_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------ unpacking


class _LimitedReader(io.RawIOBase):
    """Counts what it hands out and stops past the budget (wraps a decompressing stream)."""

    def __init__(self, stream: IO[bytes], budget: Budget, what: str):
        self._stream, self._budget, self._what = stream, budget, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        self._budget.take(len(data), self._what)
        buffer[: len(data)] = data
        return len(data)


def unpack(src: Path, name: str, out_dir: Path, *,
           limit: ExpansionLimit) -> tuple[str, list[Extracted]]:
    """Decompress/extract `src` (logically named `name`) into `out_dir`, within `limit`.

    Returns the format found (`none`, `gzip`, `tar`, `tar.gz`, `zip`) and the resulting files.
    A file that is not compressed is returned as is (no copy). Gzip and tar are recognised by
    content (magic bytes) or extension; zip only with a `.zip` extension, so that zip-based
    documents (`.docx`, `.xlsx`) land as the files they are.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as stream:
        head = stream.read(512)
    lowered = name.lower()
    try:
        if head.startswith(GZIP_MAGIC) or lowered.endswith((".gz", ".tgz")):
            return _gunzip(src, name, out_dir, limit)
        if lowered.endswith(".zip"):
            return "zip", _extract_zip(src, name, out_dir, _members_budget(limit, name))
        if _is_tar(head, lowered):
            with open(src, "rb") as stream:
                return "tar", _extract_tar(stream, name, out_dir, _members_budget(limit, name))
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise CorruptArchive(f"{name}: {_corrupt_reason(exc)}") from exc
    return "none", [Extracted(name, src, src.stat().st_size)]


def _members_budget(limit: ExpansionLimit, name: str) -> Budget:
    return limit.budget(f"the extracted content of {name}")


def _gunzip(src: Path, name: str, out_dir: Path,
            limit: ExpansionLimit) -> tuple[str, list[Extracted]]:
    inner = _strip_gz(name)
    with gzip.open(src, "rb") as probe:
        inner_head = probe.read(512)
    what = f"the decompressed content of {name}"
    budget = limit.budget(what)
    with gzip.open(src, "rb") as stream:
        limited = io.BufferedReader(_LimitedReader(stream, budget, what), buffer_size=CHUNK)
        if _is_tar(inner_head, inner.lower()):
            # The member budget is separate: tar headers and padding count only on the stream.
            files = _extract_tar(limited, name, out_dir, _members_budget(limit, name))
            return "tar.gz", files
        target = out_dir / "00000"
        size = _copy(limited, target)
    return "gzip", [Extracted(inner, target, size)]


def _strip_gz(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".tgz"):
        return name[:-4] + ".tar"
    if lowered.endswith(".gz") and len(name) > 3:
        return name[:-3]
    return name


def _is_tar(head: bytes, lowered_name: str) -> bool:
    return head[257:262] == b"ustar" or lowered_name.endswith(".tar")


def _copy(stream: IO[bytes], target: Path, budget: Optional[Budget] = None,
          what: Optional[str] = None) -> int:
    written = 0
    with open(target, "wb") as out:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                return written
            if budget is not None:
                budget.take(len(chunk), what)
            out.write(chunk)
            written += len(chunk)


def safe_member_name(raw: str) -> str:
    """The member's path normalized (`a/./b` → `a/b`), or UnsafeMember naming it."""
    if "\x00" in raw:
        raise UnsafeMember(raw, "NUL in its name")
    if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeMember(raw, "absolute path")
    parts = [part for part in re.split(r"[\\/]+", raw)]
    if ".." in parts:
        raise UnsafeMember(raw, "'..' leads outside the archive")
    parts = [part for part in parts if part not in ("", ".")]
    if not parts:
        raise UnsafeMember(raw, "empty name")
    return "/".join(parts)


@contextmanager
def _at_member(name: str) -> Iterator[None]:
    """A limit passed while extracting `name` names it (the error report's column)."""
    try:
        yield
    except ExtractionLimitExceeded as error:
        error.member = name
        raise


def _extract_tar(stream: IO[bytes], source: str, out_dir: Path, budget: Budget) -> list[Extracted]:
    files: list[Extracted] = []
    seen: set[str] = set()
    # "r|": a stream, read once front to back; nothing seeks, nothing is held in memory.
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = safe_member_name(member.name)
            if member.isdir():
                continue
            if member.issym() or member.islnk():
                kind = "symbolic link" if member.issym() else "hard link"
                raise UnsafeMember(member.name, f"a {kind} (to {member.linkname!r})")
            if not member.isreg():
                kind = ("device file" if member.ischr() or member.isblk()
                        else "FIFO" if member.isfifo() else "special file")
                raise UnsafeMember(member.name, f"a {kind}")
            if name in seen:
                raise UnsafeMember(member.name, "appears twice")
            seen.add(name)
            with _at_member(member.name):
                budget.claim(member.size, f"archive member {member.name!r} of {source}")
                source_stream = tar.extractfile(member)
                target = out_dir / f"{len(files):05d}"
                size = _copy(source_stream, target, budget,
                             f"{budget.what} (at archive member {member.name!r})")
            files.append(Extracted(name, target, size))
    return files


def _extract_zip(src: Path, source: str, out_dir: Path, budget: Budget) -> list[Extracted]:
    files: list[Extracted] = []
    seen: set[str] = set()
    with zipfile.ZipFile(src) as archive:
        for info in archive.infolist():
            name = safe_member_name(info.filename)
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeMember(info.filename, "a symbolic link")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafeMember(info.filename, "a device file or special file")
            if info.flag_bits & 0x1:
                raise CorruptArchive(
                    f"archive member {info.filename!r}: password-protected zip members are "
                    "not supported"
                )
            if name in seen:
                raise UnsafeMember(info.filename, "appears twice")
            seen.add(name)
            with _at_member(info.filename):
                budget.claim(info.file_size, f"archive member {info.filename!r} of {source}")
                target = out_dir / f"{len(files):05d}"
                with archive.open(info) as member:
                    size = _copy(member, target, budget,
                                 f"{budget.what} (at archive member {info.filename!r})")
            files.append(Extracted(name, target, size))
    return files


def _corrupt_reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return f"truncated compressed data ({exc})"
    return f"corrupt compressed or archive data ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------ type detection


def detect_type(path: Path, name: str) -> str:
    """`csv`, `pdf`, `xml` or `other`, from the content first and the extension second.

    Content wins where it is unambiguous (a PDF named `.csv` is a PDF, an `<?xml` document is
    XML whatever its name). Otherwise the extension decides, if the content agrees with it:
    `.csv`/`.tsv` must be text, `.xml` must start with a tag; anything else is `other`.
    """
    with open(path, "rb") as stream:
        head = stream.read(HEAD_BYTES)
    return detect_type_of_head(head, name)


def detect_type_of_head(head: bytes, name: str) -> str:
    """`detect_type` from the file's first `HEAD_BYTES` bytes (when they are not on disk)."""
    if b"%PDF-" in head[:1024]:
        return "pdf"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<?xml"):
        return "xml"
    suffix = Path(name).suffix.lower()
    text = _looks_like_text(head)
    if suffix == ".xml" and text and stripped.startswith(b"<"):
        return "xml"
    if suffix in (".csv", ".tsv") and text:
        return "csv"
    return "other"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    controls = sum(1 for byte in head if byte < 32 and byte not in (9, 10, 12, 13))
    return controls <= len(head) // 100


def count_csv_rows(path: Path) -> tuple[int, Optional[str]]:
    """Data rows (records after the header), streaming, as `csv.reader` counts records:
    quoted line breaks stay in their row. Returns (rows, note); the note says when the file
    ends inside an unterminated quoted field. The landing counts the same way while it
    uploads (`rows.CsvRecordCounter`); this is the same count for a file on disk."""
    # Imported here: rows.py needs numpy, which no other flow's run process loads.
    from credflow_assets.provider_feeds.rows import CsvRecordCounter

    counter = CsvRecordCounter(delimiter="\t" if path.name.lower().endswith(".tsv") else ",")
    with open(path, "rb") as raw:
        while chunk := raw.read(CHUNK):
            counter.feed(chunk)
    return counter.data_rows, counter.note
