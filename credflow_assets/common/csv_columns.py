"""The one rule that turns a CSV header cell into a column name, for every flow that reads CSVs.

Drive feeds map a sheet's header onto their model's fields with it, staged tables compare a
file's header with its Glue table's columns with it: the same header is the same column in both.
`Date of Birth`, ` DATE-OF-BIRTH ` and `date_of_birth` (with or without a UTF-8 byte-order mark)
are all `date_of_birth`; `amount ($)` is `amount`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Every run of anything but a lower-case ASCII letter or digit: one underscore.
_NOT_A_NAME_CHARACTER = re.compile(r"[^0-9a-z]+")
BYTE_ORDER_MARK = "\ufeff"


def normalize_header(cell: object) -> str:
    """A header cell's column name: byte-order mark dropped, trimmed, lower case, every run of
    characters other than a-z and 0-9 one `_`, no `_` at either end; `""` for an empty cell."""
    text = str(cell if cell is not None else "").lstrip(BYTE_ORDER_MARK).strip().lower()
    return _NOT_A_NAME_CHARACTER.sub("_", text).strip("_")


def normalize_headers(cells: Iterable[object]) -> list[str]:
    """`normalize_header` of each cell of a header row, in order."""
    return [normalize_header(cell) for cell in cells]
