"""How big one provider file may become while it is unpacked, and the sentence when it does not.

Every stage that makes bytes from fewer bytes counts what it makes against one limit: gpg's
plaintext (OpenPGP compresses inside the encryption: 1.9 MB of `.gpg` can hold 1.5 GB of
zeros), each gzip layer, and an archive's members together. The limit is the smaller of:

- `max_extracted_bytes`: what the scratch disk and the bucket may take for one file;
- `max_expansion_ratio` times the file's size as received (the raw copy): real rosters
  compress 3-10 times, a bomb a thousand times and more. The first `RATIO_GRACE_BYTES` are
  exempt, so that a small, very repetitive file (a tar of a few short files is mostly padding)
  is never mistaken for a bomb.

A stage stops as soon as its count passes the limit, before the bytes that pass it are
written anywhere, and the landing then fails with `ExtractionLimitExceeded`, whose message
names what passed which limit and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

RATIO_GRACE_BYTES = 1024 * 1024


class ExtractionLimitExceeded(Exception):
    """More bytes would come out of a file than its limits allow (a decompression bomb).

    Its message is a whole sentence (it ends with what to do): the failure shows it as is.
    `member` names the archive member being extracted when it happened (None: not a member).
    """

    member: Optional[str] = None


@dataclass(frozen=True)
class ExpansionLimit:
    max_extracted_bytes: int
    max_expansion_ratio: Optional[float] = None  # None: no ratio (a caller with no raw size)
    received_bytes: int = 0  # the file's size as the provider sent it

    @property
    def ratio_bytes(self) -> Optional[int]:
        if self.max_expansion_ratio is None:
            return None
        return max(RATIO_GRACE_BYTES, math.floor(self.max_expansion_ratio * self.received_bytes))

    @property
    def max_bytes(self) -> int:
        """The bytes any one stage may produce."""
        ratio = self.ratio_bytes
        return self.max_extracted_bytes if ratio is None else min(self.max_extracted_bytes, ratio)

    def exceeded(self, what: str, passed: str = "passed") -> ExtractionLimitExceeded:
        """The error for `what` (e.g. "the decrypted content") passing `max_bytes`."""
        ratio = self.ratio_bytes
        if ratio is not None and ratio < self.max_extracted_bytes:
            grace = ", at least 1 MB" if ratio == RATIO_GRACE_BYTES else ""
            limit = (f"{human_size(ratio)} (max_expansion_ratio: {self.max_expansion_ratio:g} "
                     f"times the {human_size(self.received_bytes)} received{grace})")
            setting = "max_expansion_ratio"
        else:
            limit = f"{human_size(self.max_extracted_bytes)} (max_extracted_bytes)"
            setting = "max_extracted_bytes"
        return ExtractionLimitExceeded(
            f"{what} {passed} {limit}; refused, nothing landed. A decompression bomb, or, if "
            f"the file is genuine, raise the provider's {setting}")

    def budget(self, what: str) -> Budget:
        return Budget(self, what)


class Budget:
    """Counts what one stage produces and stops it past the limit."""

    def __init__(self, limit: ExpansionLimit, what: str):
        self.limit, self.what, self.used = limit, what, 0

    def take(self, count: int, what: Optional[str] = None) -> None:
        """Count `count` bytes about to be written; raise before they pass the limit."""
        if self.used + count > self.limit.max_bytes:
            raise self.limit.exceeded(what or self.what)
        self.used += count

    def claim(self, declared: int, what: str) -> None:
        """Refuse at once a member whose header already claims too much."""
        if self.used + declared > self.limit.max_bytes:
            raise self.limit.exceeded(
                what, f"({human_size(declared)} by its header) takes the extracted content past")


def human_size(count: int) -> str:
    """`100 MB`, `1.9 MB`, `10 GB`, `512 B` (binary multiples, as the rest of the flow)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            if unit == "B" or value == int(value):
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
