"""A staged file's columns against its table's: normalization, the header, the table's schema.

Glue reads a CSV by position, so a file belongs to a table only if its normalized columns are the
table's columns *in order*. Normalization is every flow's (`credflow_assets.common.csv_columns`):
byte-order mark dropped, trimmed, lower case, every run of characters other than a-z and 0-9 one
`_`, none at either end: `First Name` → `first_name`, `amount ($)` → `amount`, as in the Drive
feeds. `compare_columns` still checks names Athena accepts, as a guard for names that did not
come through that rule.

The table's columns come from, in order of authority:
1. the Glue table, when it exists;
2. else the oldest file in `prod/{table}/` (the Lambda's rule, for a table whose Glue entry
   was lost);
3. else none: the file founds the table, and only its own header must be usable (non-empty,
   unique names Athena accepts, not the partition column).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from credflow_assets.common.csv_columns import normalize_headers
from credflow_assets.resources.glue import GlueResource, table_columns
from credflow_assets.resources.s3 import iter_objects
from credflow_assets.staged_tables.layout import PARTITION_COLUMN, Layout

HEADER_READ_BYTES = 64 * 1024
MAX_HEADER_BYTES = 1024 * 1024
# Athena: lower-case letters, digits and underscores only.
_ATHENA_NAME = re.compile(r"^[a-z0-9_]+$")


class HeaderError(ValueError):
    """The file's first line cannot be read as a CSV header."""


def read_header(client: Any, bucket: str, key: str, *, etag: str | None = None) -> list[str]:
    """The raw column names on the object's first CSV record, reading only the first bytes.

    With `etag`, reads only that version (S3 answers 412 if the object changed). Raises
    `HeaderError` for an empty object, a header that is not UTF-8 or longer than 1 MiB.
    """
    wanted = HEADER_READ_BYTES
    conditions = {"IfMatch": f'"{etag}"'} if etag else {}
    while True:
        try:
            response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{wanted - 1}",
                                         **conditions)
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidRange":
                raise HeaderError("the file is empty: no header line") from None
            raise
        data = response["Body"].read()
        total = _total_size(response, len(data))
        complete = len(data) >= total
        if not data:
            raise HeaderError("the file is empty: no header line")
        cut = data if complete else data[: data.rfind(b"\n") + 1]
        if cut:
            try:
                text = codecs.decode(cut, "utf-8-sig")
            except UnicodeDecodeError as error:
                # What was read holds rows too: a byte that is not UTF-8 after the header's
                # line is the rows' problem, which the row check reports by row.
                header = _header_before(cut[:error.start])
                if header is not None:
                    return _comma_separated(header)
                raise HeaderError(
                    f"the header is not UTF-8 text (byte {error.start}): save the file as "
                    "CSV UTF-8"
                ) from None
            record = _first_record(text, complete)
            if record is not None:
                return _comma_separated(record)
        if complete or wanted >= MAX_HEADER_BYTES:
            raise HeaderError(
                "the header line is incomplete" if complete
                else f"no complete header line in the first {MAX_HEADER_BYTES} bytes"
            )
        wanted *= 4


def _total_size(response: dict, received: int) -> int:
    content_range = response.get("ContentRange") or ""
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return received  # no range in the answer: the whole object came back


# Separators spreadsheet tools save "CSV" with in some locales, or as text files.
_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _comma_separated(header: list[str]) -> list[str]:
    """The header, unless it is one field holding another separator: a file separated by
    semicolons (or tabs, or bars) read as CSV has one column, whose name, normalized, would
    even be a valid one (`claim_id_first_name_…`) and found a table of one column."""
    if len(header) == 1:
        for separator, plural in _OTHER_SEPARATORS.items():
            if separator in header[0]:
                raise HeaderError(f"the header is one column holding {plural}: the file is "
                                  f"separated by {plural}, not commas; save it as CSV "
                                  "(comma-separated)")
    return header


def _header_before(valid: bytes) -> list[str] | None:
    """The first record, if it ends (with its line) within `valid`, UTF-8 text."""
    return _first_record(codecs.decode(valid[: valid.rfind(b"\n") + 1], "utf-8-sig"),
                         complete=False)


def _first_record(text: str, complete: bool) -> list[str] | None:
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        record = next(reader)
    except StopIteration:
        return None
    except csv.Error:
        if complete:
            raise HeaderError("the header line is not valid CSV (an unclosed quote?)") from None
        return None  # a quoted field runs past what was read: read more
    return record


@dataclass(frozen=True)
class TableColumns:
    """The columns a table's files must have, and where they came from."""

    columns: list[str] | None  # None: no table yet, the file founds it
    source: str  # "glue" | "prod" | "founding"
    description: str
    glue_types: dict[str, str] = field(default_factory=dict)  # column → Glue type (glue only)
    prod_key: str | None = None  # the oldest prod file ("prod" only)


def resolve_table_columns(
    glue: GlueResource, client: Any, layout: Layout, database: str, table: str
) -> TableColumns:
    found = glue.get_table(database, table)
    if found is not None:
        pairs = table_columns(found)
        return TableColumns(
            columns=[name for name, _ in pairs],
            source="glue",
            description=f"Glue table {database}.{table}",
            glue_types=dict(pairs),
        )
    for key in prod_files_oldest_first(client, layout, table):
        try:
            columns = normalize_headers(read_header(client, layout.bucket, key))
        except HeaderError:
            continue  # an unreadable prod file cannot define the table (the audit names it)
        return TableColumns(
            columns=columns,
            source="prod",
            description=f"the oldest file in prod, {layout.uri(key)} (no Glue table yet)",
            prod_key=key,
        )
    return TableColumns(
        columns=None, source="founding",
        description=f"no Glue table {database}.{table} and no file in prod: this file founds it",
    )


def prod_files_oldest_first(client: Any, layout: Layout, table: str) -> list[str]:
    """The keys of `table`'s promoted files, earliest-modified first (ties: the smaller key)."""
    dated = sorted(
        (item["LastModified"], item["Key"])
        for item in iter_objects(client, layout.bucket, prefix=layout.prod_table_prefix(table))
        if layout.prod_file(item["Key"]) is not None
    )
    return [key for _, key in dated]


@dataclass(frozen=True)
class ColumnComparison:
    """A file's normalized header against its table's columns."""

    actual: list[str]
    expected: list[str] | None
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    # Columns whose order relative to the other shared columns differs:
    # {"column", "table_position", "file_position"} (1-based).
    reordered: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unnamed_positions: list[int] = field(default_factory=list)
    invalid_names: list[str] = field(default_factory=list)  # founding file only
    partition_column_clash: bool = False  # founding file only

    @property
    def founding(self) -> bool:
        return self.expected is None

    @property
    def passed(self) -> bool:
        return not (self.missing or self.extra or self.reordered or self.duplicates
                    or self.unnamed_positions or self.invalid_names
                    or self.partition_column_clash or not self.actual)

    def problems(self) -> list[str]:
        """One phrase per problem, naming the columns."""
        phrases = []
        if not self.actual:
            phrases.append("no columns")
        if self.missing:
            phrases.append(f"missing column(s) {', '.join(self.missing)}")
        if self.extra:
            phrases.append(f"extra column(s) {', '.join(self.extra)}")
        if self.reordered:
            phrases.append("column(s) out of order: " + ", ".join(
                f"{item['column']} (table position {item['table_position']}, file position "
                f"{item['file_position']})" for item in self.reordered))
        if self.duplicates:
            phrases.append(f"duplicate column(s) {', '.join(self.duplicates)}")
        if self.unnamed_positions:
            phrases.append("unnamed column(s) at position(s) "
                           + ", ".join(str(p) for p in self.unnamed_positions))
        if self.invalid_names:
            phrases.append("column name(s) Athena cannot use (only a-z, 0-9, _): "
                           + ", ".join(self.invalid_names))
        if self.partition_column_clash:
            phrases.append(f"a column named {PARTITION_COLUMN}, the table's partition column")
        return phrases

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "problems": self.problems()}


def compare_columns(actual: list[str], expected: list[str] | None) -> ColumnComparison:
    """Compare normalized names; `expected=None` checks a founding header on its own."""
    seen: set[str] = set()
    duplicates = []
    for name in actual:
        if name and name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    unnamed = [position for position, name in enumerate(actual, 1) if not name]
    if expected is None:
        return ColumnComparison(
            actual=actual, expected=None, duplicates=duplicates, unnamed_positions=unnamed,
            invalid_names=[n for n in actual if n and not _ATHENA_NAME.match(n)],
            partition_column_clash=PARTITION_COLUMN in actual,
        )
    expected_set, actual_set = set(expected), set(actual)
    shared_in_table = [name for name in expected if name in actual_set]
    shared_in_file = [name for name in dict.fromkeys(actual) if name in expected_set]
    reordered = [
        {"column": name, "table_position": expected.index(name) + 1,
         "file_position": actual.index(name) + 1}
        for index, name in enumerate(shared_in_file)
        if shared_in_table[index] != name
    ]
    return ColumnComparison(
        actual=actual,
        expected=list(expected),
        missing=[name for name in expected if name not in actual_set],
        extra=[name for name in dict.fromkeys(actual) if name and name not in expected_set],
        reordered=reordered,
        duplicates=duplicates,
        unnamed_positions=unnamed,
    )
