"""Count CSV records while the bytes stream past, with `csv.reader`'s own rules.

The landing reports each CSV's data rows. Counting them with `csv.reader` was a second full
pass over the plaintext, and the slowest stage of the flow (it builds a list of strings per
row). `CsvRecordCounter` is fed the chunks that are being uploaded anyway and gives the count
`csv.reader` (default dialect, not strict) would give:

- a record ends at `\\n`, `\\r\\n` or a lone `\\r` outside a quoted field, blank lines included;
- a quote opens a quoted field only at the start of a field (after the delimiter, a line
  break, or the quote closing the previous quoted part: `""` is an escaped quote); anywhere
  else, as in `5'10"`, it is a literal character and opens nothing;
- the last record counts even without a final line break, or when the file ends inside an
  unterminated quoted field (the count then carries a note).

Speed: a chunk without quotes costs two `bytes.count` calls. A chunk with quotes is checked
with numpy: when every quote that a simple odd/even pairing would call opening really stands
at a field start (any RFC 4180 file), the pairing is the parse and line breaks are classified
in bulk; otherwise the chunk's quotes are walked one by one. No field size limit applies.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

QUOTE, LF, CR = ord('"'), ord("\n"), ord("\r")


class CsvRecordCounter:
    """Feed it a CSV's bytes in order (`feed`), then read `data_rows` and `note`."""

    def __init__(self, delimiter: str = ","):
        self._delimiter = ord(delimiter)
        # Bytes after which a quote opens a quoted field (None: the start of the file).
        self._field_starts = {self._delimiter, LF, CR, None}
        self._breaks = 0  # record ends seen so far
        self._inside = False  # inside a quoted field at the end of what was fed
        self._last: Optional[int] = None  # the last byte fed
        self._closed_at_end = False  # the last byte fed closed a quoted part
        self._cr_pending = False  # the last byte fed is a \r outside quotes: \r or \r\n?

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._cr_pending:
            self._cr_pending = False
            if chunk[0] != LF:
                self._breaks += 1  # a lone \r ended the record; a \r\n counts at its \n
        if not self._inside and b'"' not in chunk:
            self._count_unquoted(chunk)
            self._closed_at_end = False
        else:
            self._count_quoted(chunk)
        self._last = chunk[-1]

    @property
    def records(self) -> int:
        """CSV records so far, as `csv.reader` would yield them (the header included)."""
        tail = self._cr_pending or self._inside or (
            self._last is not None and self._last not in (LF, CR))
        return self._breaks + (1 if tail else 0)

    @property
    def data_rows(self) -> int:
        """Records after the header."""
        return max(self.records - 1, 0)

    @property
    def note(self) -> Optional[str]:
        if self._inside:
            return "the file ends inside an unterminated quoted field; its last row is partial"
        return None

    # -- internals ------------------------------------------------------------------------

    def _count_unquoted(self, chunk: bytes) -> None:
        self._breaks += chunk.count(b"\n")
        if b"\r" in chunk:
            # \r\n is one record end, counted at its \n; a lone \r is one too.
            self._breaks += chunk.count(b"\r") - chunk.count(b"\r\n")
            if chunk[-1] == CR:
                self._breaks -= 1  # undecided until the next chunk's first byte
                self._cr_pending = True

    def _count_quoted(self, chunk: bytes) -> None:
        data = np.frombuffer(chunk, dtype=np.uint8)
        quotes = np.flatnonzero(data == QUOTE)
        toggles = quotes if self._pairing_is_the_parse(data, quotes) else self._walk(chunk, quotes)
        inside_at_start = self._inside
        breaks = np.flatnonzero(data == LF)
        self._breaks += int(np.count_nonzero(
            _outside(breaks, toggles, inside_at_start)))
        if b"\r" in chunk:
            returns = np.flatnonzero(data == CR)
            lone = returns[:-1] if returns.size and returns[-1] == len(chunk) - 1 else returns
            lone = lone[data[lone + 1] != LF]
            self._breaks += int(np.count_nonzero(_outside(lone, toggles, inside_at_start)))
        self._inside = bool((toggles.size + inside_at_start) % 2)
        self._closed_at_end = bool(toggles.size and toggles[-1] == len(chunk) - 1
                                   and not self._inside)
        if chunk[-1] == CR and not self._inside:
            self._cr_pending = True

    def _pairing_is_the_parse(self, data: np.ndarray, quotes: np.ndarray) -> bool:
        """Whether every quote that odd/even pairing calls opening is at a field start."""
        opening = quotes[1::2] if self._inside else quotes[0::2]
        if not opening.size:
            return True
        first = 0
        if opening[0] == 0:
            if not (self._last in self._field_starts or self._closed_at_end):
                return False
            first = 1
        before = data[opening[first:] - 1]
        # A quote right before an opening one is, in the pairing, the closing one: `""`.
        return bool(np.isin(before, [self._delimiter, LF, CR, QUOTE]).all())

    def _walk(self, chunk: bytes, quotes: np.ndarray) -> np.ndarray:
        """The quotes that open or close a quoted part, by csv.reader's rules, one by one."""
        inside, closed_at = self._inside, (-1 if self._closed_at_end else None)
        toggles = []
        for position in quotes.tolist():
            if inside:
                inside, closed_at = False, position
                toggles.append(position)
                continue
            before = chunk[position - 1] if position else self._last
            if before in self._field_starts or closed_at == position - 1:
                inside = True
                toggles.append(position)
        return np.array(toggles, dtype=np.int64)


def _outside(positions: np.ndarray, toggles: np.ndarray, inside_at_start: bool) -> np.ndarray:
    """Which of `positions` lie outside quoted parts, given the quotes that toggle them."""
    before = np.searchsorted(toggles, positions) + inside_at_start
    return before % 2 == 0
