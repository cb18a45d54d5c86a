"""The one CSV engine of the flows: rows streamed by Arrow in chunks of text cells, and pandera
run on each chunk.

Drive feeds read a downloaded sheet with it, staged tables an S3 object as it arrives: memory
follows the chunk size, never the file size. pyarrow's streaming CSV reader parses in C++,
outside the GIL, and cells stay Arrow strings, so trimming, the empty-cell check and pandera's
regex checks (RE2) never build Python strings (measured against `pandas.read_csv` chunks: see
the staged-tables validation module).

What a flow decides is in `CsvShape`: where row numbers start, whether cells are trimmed and
blank lines count as rows, and what happens to a row with more fields than the header. A row
with fewer fields is read as if the missing ones were empty, as spreadsheet tools and
`pandas.read_csv` do. What cannot be read raises `CsvChunkError`, whose `kind` and `row` each
flow turns into its own sentence.
"""

from __future__ import annotations

import csv
import gc
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd

# Arrow reads a CSV a block at a time and parses several blocks ahead: memory follows the block
# size (measured at 1M rows: +30 MB at 256 KiB with jemalloc, +120 MB at 1 MiB with mimalloc,
# pyarrow's default pool, which keeps freed memory). A row may not be larger than a block
# (the csv module's limit on a cell was 128 KiB).
CSV_BLOCK_BYTES = 256 << 10
# Appended to a stream whose end must not be inside a quoted cell (see `_EndMarked`): a quote
# and characters no CSV cell holds.
_END_MARK = "\x1ecredflow-end-of-file\x1e"
GC_EVERY_CHUNKS = 5
T = TypeVar("T")


class CsvChunkError(ValueError):
    """The rows cannot be read on. `kind` says why:

    - `too_many_fields`: row `row` has `fields` fields (the shape refuses such rows);
    - `unclosed_quote`: row `row` opens a quoted cell that never closes;
    - `row_too_long`: a row from `row` on is longer than a block (`CSV_BLOCK_BYTES`);
    - `value_without_header`: row `row` has a value in column `position`, which has no name;
    - `not_utf8`: text that is not UTF-8, at row `row` or after;
    - `malformed`: anything else Arrow refuses, at row `row` or after (`detail`: what).
    """

    def __init__(self, kind: str, row: int, *, fields: int | None = None,
                 position: int | None = None, detail: str = ""):
        self.kind, self.row, self.fields, self.position, self.detail = (
            kind, row, fields, position, detail)
        super().__init__(f"{kind} at row {row}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class CsvShape:
    """How a flow reads its CSV rows; row 1 of the file is the header and is not read here."""

    # One name per header cell, in order; None for a cell without a name: that column is
    # dropped, and a value in it refuses the file (it would otherwise vanish without a word).
    names: tuple[str | None, ...]
    first_row: int = 2  # the number of the first row after the header
    strip: bool = True  # trim the spaces around each cell
    blank_lines_are_rows: bool = True  # else an empty line is skipped, and numbered as none
    # The column that keeps what a row has beyond the header's fields (joined by commas; empty
    # for the other rows); None: such a row refuses the file.
    extra_fields_column: str | None = None
    encoding: str = "utf8"  # Arrow's name for the text's encoding
    # A file that ends inside a quoted cell refuses the file. Without it Arrow reads the open
    # quote as one cell running to the end of the file, taking in the rows after it.
    refuse_quote_open_at_end: bool = False

    @property
    def width(self) -> int:
        return len(self.names)


def csv_chunks(source: Path | str | IO[bytes], shape: CsvShape,
               chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows after the header, `chunk_rows` at a time: DataFrames indexed by row number,
    one pandas `string[pyarrow]` column per named header cell (plus `extra_fields_column`),
    empty cells missing. `source`: a path or a binary stream, read once."""
    if shape.refuse_quote_open_at_end and isinstance(source, (str, Path)):
        with open(source, "rb") as stream:
            yield from csv_chunks(stream, shape, chunk_rows)
        return
    yield from _chunks(_EndMarked(source) if shape.refuse_quote_open_at_end else source,
                       shape, chunk_rows)


def _chunks(source, shape: CsvShape, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = _RowNumbers(shape.first_row)
    irregular = _IrregularRows(shape, rows)
    columns = [f"c{i}" for i in range(shape.width)]
    pool = _arrow_memory_pool()
    try:
        batches = pacsv.open_csv(
            source, memory_pool=pool,
            read_options=pacsv.ReadOptions(
                column_names=columns, skip_rows=1, block_size=CSV_BLOCK_BYTES,
                # `InvalidRow.number` (the row a spreadsheet shows) needs one thread.
                use_threads=False, encoding=shape.encoding),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=not shape.blank_lines_are_rows,
                invalid_row_handler=irregular.handle),
            convert_options=pacsv.ConvertOptions(
                column_types={column: pa.string() for column in columns},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        pending: list = []
        pending_rows = 0
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            # One row is always held back: the last row of the file may be the end mark.
            while pending_rows > chunk_rows:
                table = pa.Table.from_batches(pending)
                yield _frame(table.slice(0, chunk_rows), shape, rows, pool)
                rest = table.slice(chunk_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
        table = pa.Table.from_batches(pending, schema=batches.schema)
        if shape.refuse_quote_open_at_end:
            table = irregular.check_end(table)
        if table.num_rows or rows.has_irregular_rows_left():
            yield _frame(table, shape, rows, pool, last=True)
    except pa.ArrowInvalid as error:
        if "Could not skip initial" in str(error):  # a header with no line end, no rows
            return
        if irregular.error is not None:
            raise irregular.error from None
        raise _arrow_problem(error, rows.next_number) from None


def collecting_cycles(chunks: Iterable[T], every: int = GC_EVERY_CHUNKS) -> Iterator[T]:
    """`chunks`, with a full garbage collection after every `every` of them.

    pandas and pandera leave each chunk in reference cycles, which only a full collection
    frees: without it, memory grows with the file until the collector gets round to it
    (staged tables, 1M rows: 276 MB, 3M rows: 386 MB; with it, 236 MB at both). What is alive
    when the first chunk is asked for (in a run: Dagster, its modules, the event log) stays
    alive: frozen, it is left out of the collections, which then cost what the chunks left."""
    gc.freeze()
    try:
        for number, chunk in enumerate(chunks, 1):
            yield chunk
            if number % every == 0:
                gc.collect()
    finally:
        gc.unfreeze()


class _EndMarked(io.RawIOBase):
    """A binary stream with `_END_MARK` after its last byte, on a line of its own.

    If the stream ends outside a quote, the mark is a row of its own (a quoted cell, left open);
    if it ends inside a quoted cell, the mark's quote closes that cell and the rest of the mark
    joins it, so no such row appears: `_IrregularRows.check_end` tells which."""

    def __init__(self, stream: IO[bytes]):
        self.stream, self.tail, self.last_byte = stream, None, b"\n"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.tail is None:
            data = self.stream.read(len(buffer))
            if data:
                self.last_byte = data[-1:]
            else:
                line_end = b"" if self.last_byte in (b"\n", b"\r") else b"\n"
                self.tail = line_end + b'"' + _END_MARK.encode()
        if self.tail is not None:
            data, self.tail = self.tail[:len(buffer)], self.tail[len(buffer):]
        buffer[:len(data)] = data
        return len(data)


class _RowNumbers:
    """The row number of each row Arrow yields: consecutive from the first row, except around
    the irregular rows Arrow handed back (read here instead), which keep their own numbers."""

    def __init__(self, first_row: int):
        self.irregular: dict[int, list[str]] = {}  # row number → fields, filled as Arrow parses
        self.next_number = first_row

    def take(self, count: int, last: bool = False):
        """(the numbers of the next `count` Arrow rows, the irregular rows that go among them)."""
        import numpy as np
        import pandas as pd

        start = self.next_number
        waiting = [number for number in sorted(self.irregular) if number >= start]
        if not waiting:
            self.next_number = start + count
            return pd.RangeIndex(start, start + count), []
        # The Arrow rows take the first `count` numbers that no irregular row holds.
        numbers = np.setdiff1d(np.arange(start, start + count + len(waiting)), waiting,
                               assume_unique=True)[:count]
        end = int(numbers[-1]) if count else start - 1
        taken = [number for number in waiting if last or number < end]
        self.next_number = max([end, *taken]) + 1
        return pd.Index(numbers), [(number, self.irregular.pop(number)) for number in taken]

    def has_irregular_rows_left(self) -> bool:
        return bool(self.irregular)


class _IrregularRows:
    """Arrow's `invalid_row_handler`: a row whose field count is not the header's is read here
    (by the csv module, as leniently as Arrow reads the others) and put back in its place."""

    def __init__(self, shape: CsvShape, rows: _RowNumbers):
        self.shape, self.rows = shape, rows
        self.error: CsvChunkError | None = None  # the first refused row: raised once Arrow stops
        self.end_mark_seen = False

    def handle(self, row) -> str:
        # Arrow numbers rows from the header's 1; a flow may number them from elsewhere.
        number = row.number - 2 + self.shape.first_row
        if row.text == '"' + _END_MARK:
            self.end_mark_seen = True
            return "skip"
        width = self.shape.width
        if row.actual_columns > width and self.shape.extra_fields_column is None:
            self.error = self.error or CsvChunkError("too_many_fields", number,
                                                     fields=row.actual_columns)
            return "error"
        try:
            fields = _fields(number, row.text)
        except CsvChunkError as error:
            self.error = self.error or error
            return "error"
        extra = ",".join(fields[width:])
        self.rows.irregular[number] = fields[:width] + [""] * (width - len(fields)) + [extra]
        return "skip"

    def check_end(self, table):
        """The last rows without the end mark's row; CsvChunkError when the file ended inside
        a quoted cell (the mark's row then never came)."""
        if self.end_mark_seen:
            return table
        if table.num_rows and table.column(0)[-1].as_py() == _END_MARK and all(
                column[-1].as_py() == "" for column in table.columns[1:]):
            return table.slice(0, table.num_rows - 1)  # a one-column file: the mark is a row
        last = self.rows.next_number + table.num_rows + len(self.rows.irregular) - 1
        raise CsvChunkError("unclosed_quote", last)


def _fields(number: int, text: str) -> list[str]:
    """The fields of one row's text; CsvChunkError when it opens a quote that never closes
    (it then runs to the end of the file, so Arrow sees it as one row of the wrong width)."""
    try:
        list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            raise CsvChunkError("unclosed_quote", number) from None
    records = list(csv.reader(io.StringIO(text)))
    return records[0] if records else []


def _arrow_memory_pool():
    """jemalloc where pyarrow has it: it hands memory back as chunks come and go, where the
    default (mimalloc) kept about 50 MB more reading 1M rows."""
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return pa.default_memory_pool()


def _frame(table, shape: CsvShape, rows: _RowNumbers, pool, last: bool = False):
    """One chunk of Arrow cells → a DataFrame: cells trimmed (if the shape says so), empty ones
    missing, unnamed columns dropped (once checked to be empty), indexed by row number."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    index, irregular = rows.take(table.num_rows, last)
    missing = pa.scalar(None, pa.string())
    cleaned = {}
    for position, (name, cells) in enumerate(zip(shape.names, table.columns)):
        if shape.strip:
            cells = pc.utf8_trim_whitespace(cells, memory_pool=pool)
        cells = pc.if_else(pc.equal(pc.binary_length(cells, memory_pool=pool), 0,
                                    memory_pool=pool), missing, cells, memory_pool=pool)
        if name is None:
            filled = pc.is_valid(cells)
            if pc.any(filled).as_py():
                raise CsvChunkError("value_without_header",
                                    int(index[pc.index(filled, True).as_py()]), position=position)
            continue
        cleaned[name] = pd.arrays.ArrowStringArray(cells)
    if shape.extra_fields_column is not None:
        cleaned[shape.extra_fields_column] = pd.array([None] * table.num_rows,
                                                      dtype="string[pyarrow]")
    frame = pd.DataFrame(cleaned, index=index)
    if irregular:
        frame = _with_irregular_rows(frame, irregular, shape)
    return frame


def _with_irregular_rows(frame, irregular: list[tuple[int, list[str]]], shape: CsvShape):
    import pandas as pd

    def cell(text: str) -> str | None:
        return (text.strip() if shape.strip else text) or None

    for number, fields in irregular:
        for position, name in enumerate(shape.names):
            if name is None and cell(fields[position]):
                raise CsvChunkError("value_without_header", number, position=position)
    columns = {name: [cell(fields[position]) for _, fields in irregular]
               for position, name in enumerate(shape.names) if name is not None}
    if shape.extra_fields_column is not None:
        columns[shape.extra_fields_column] = [fields[-1] or None for _, fields in irregular]
    extra = pd.DataFrame({name: pd.array(cells, dtype="string[pyarrow]")
                          for name, cells in columns.items()},
                         index=[number for number, _ in irregular])
    return pd.concat([frame, extra]).sort_index() if len(frame) else extra


def _arrow_problem(error: Exception, row: int) -> CsvChunkError:
    """Arrow's error as a CsvChunkError at `row` (where Arrow had got to)."""
    text = str(error)
    kind = ("row_too_long" if "straddles two block boundaries" in text
            else "not_utf8" if "invalid UTF8" in text else "malformed")
    return CsvChunkError(kind, row, detail=_arrow_error(text))


def _arrow_error(text: str) -> str:
    """What went wrong, from Arrow's message, without the row text Arrow quotes after it."""
    text = text.strip().splitlines()[0] if text.strip() else "unreadable"
    text = re.sub(r"^CSV (parse|conversion) error[^:]*: ", "", text)
    text = re.sub(r"^Row #\d+: ", "", text)
    return text.split(": ", 1)[0]


# -- pandera, one chunk at a time -----------------------------------------------------------------

@dataclass(frozen=True)
class SchemaFailure:
    """One of pandera's failure cases on a chunk."""

    row: int | None  # the chunk's index label (its row number); None: the column's, not a row's
    column: str  # "" when pandera names none
    check: str
    value: Any  # pandera's failure case: the value as coerced, for a check after coercion


def run_schema(schema: Any, frame: pd.DataFrame) -> tuple[pd.DataFrame | None,
                                                         list[SchemaFailure]]:
    """(the validated frame, no failures) or (None, every failure): pandera with `lazy=True`,
    so one bad cell does not hide the others. `schema`: a DataFrameSchema or DataFrameModel."""
    import pandera.errors

    try:
        return schema.validate(frame, lazy=True), []
    except pandera.errors.SchemaErrors as errors:
        return None, [
            SchemaFailure(None if is_missing(case.index) else int(case.index),
                          "" if case.column is None else str(case.column), str(case.check),
                          case.failure_case)
            for case in errors.failure_cases.itertuples(index=False)]


def quick_checkable(schema: Any) -> bool:
    """Whether `passes_every_rule` can vouch for a chunk under `schema`: no coercion, no
    parsers, no uniqueness, no dataframe-wide checks, no columns matched by regex. A schema
    with any of these goes through pandera every time."""
    if schema.coerce or schema.checks or schema.unique or getattr(schema, "parsers", None):
        return False
    return not any(column.coerce or column.unique or column.regex
                   or getattr(column, "parsers", None) for column in schema.columns.values())


def passes_every_rule(schema: Any, frame: pd.DataFrame) -> bool:
    """True only when every row of `frame` meets every rule of `schema` (a `quick_checkable`
    DataFrameSchema): its nullability, its dtype (only when it is exactly the frame's, else
    False) and each of its checks, called as pandera calls it (`Check.__call__`, which skips
    missing cells as validation does). Any doubt is False: the caller then runs pandera, whose
    failure cases name the rows. A clean chunk (most of them) then skips pandera's own run,
    whose bookkeeping around the same checks was a quarter to a third of the feeds'
    validation CPU (bench/RESULTS.md §2, session 8)."""
    for name, column in schema.columns.items():
        if name not in frame.columns:
            return False
        series = frame[name]
        if column.dtype is not None and str(column.dtype) != str(series.dtype):
            return False
        if not column.nullable and series.hasnans:
            return False
        for check in column.checks:
            if check.groupby is not None or not bool(check(series).check_passed):
                return False
    return True


def is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA: a cell (or failure case) with no value."""
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # not a scalar: a value all the same
        return False
