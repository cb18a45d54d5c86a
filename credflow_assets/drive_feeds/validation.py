"""A feed's plan (its columns, id column, date formats and SQL types, checked once when the code
location loads) and the validation of one chunk of rows against it.

Validation is per row: a bad cell rejects its row, with the spreadsheet row number and a reason;
the other rows go on. Pandera runs the model's rules on the columns that have rules (see
`_row_schema`). Reasons name the column and the kind of problem, never the value (values are
kept for the outbound summary only, not for logs or run metadata).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from credflow_assets.common.csv_chunks import (
    is_missing,
    passes_every_rule,
    quick_checkable,
    run_schema,
)

if TYPE_CHECKING:
    import pandas as pd

    from credflow_assets.config import FeedConfig

# Columns the engine adds to every feed table; a model may not use these names.
SOURCE_FILE_ID, SOURCE_REVISION = "source_file_id", "source_revision"
FIRST_INGESTED_AT, LAST_CHANGED_AT = "first_ingested_at", "last_changed_at"
ENGINE_COLUMNS = (SOURCE_FILE_ID, SOURCE_REVISION, FIRST_INGESTED_AT, LAST_CHANGED_AT)
MAX_VALUE_CHARS = 200


class FeedConfigError(ValueError):
    """A feed's config does not fit its model (raised when the definitions load)."""


@dataclass(frozen=True)
class Rejection:
    row_number: int
    column: str
    reason: str
    value: str | None = None  # for the outbound summary only


@dataclass
class ColumnPlan:
    name: str
    kind: str  # text | date | datetime | integer | float | boolean
    nullable: bool
    description: str | None
    date_format: str | None = None


@dataclass
class FeedPlan:
    """A feed's columns and config, checked when the code location loads (no pandera needed), and
    its pandera rules, built on first use: only a run that validates rows imports pandera."""

    feed: FeedConfig
    columns: list[ColumnPlan]
    tracked: list[str]
    by_name: dict[str, ColumnPlan] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.feed.name

    @property
    def id_column(self) -> str:
        return self.feed.id_column

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def value_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.name != self.id_column]

    @functools.cached_property
    def model(self) -> type:
        from credflow_assets.drive_feeds.schemas import schema_model

        return schema_model(self.feed.schema_name)

    @functools.cached_property
    def schema(self):
        """The model's pandera DataFrameSchema, id uniqueness left to the engine (file-wide)."""
        full = self.model.to_schema()
        found = list(full.columns)
        if found != self.column_names:  # the model changed under a running process
            raise FeedConfigError(f"feeds[{self.name}]: {self.feed.schema_name} has columns "
                                  f"{found}, not {self.column_names}")
        return full.update_column(self.id_column, unique=False)

    @functools.cached_property
    def needs_coercion(self) -> bool:
        return self.schema.coerce or any(c.coerce for c in self.schema.columns.values())

    @functools.cached_property
    def row_schema(self):
        """What pandera checks on each chunk (see `_row_schema`)."""
        return _row_schema(self.schema, self.columns)

    @functools.cached_property
    def quick_checks(self) -> bool:
        """A clean chunk may skip pandera's failure-case bookkeeping (`_run_schema`)."""
        return not self.needs_coercion and quick_checkable(self.row_schema)


def build_plan(feed: FeedConfig) -> FeedPlan:
    """Check the feed's config against its model's columns (`model_columns.py`)."""
    from credflow_assets.drive_feeds.model_columns import UnknownSchemaError, model_columns

    where = f"feeds[{feed.name}]"
    try:
        model = model_columns(feed.schema_name)
    except UnknownSchemaError as error:
        raise FeedConfigError(f"{where}.schema: {error}") from None
    names = [column.name for column in model]
    if feed.id_column not in names:
        raise FeedConfigError(
            f"{where}.id_column: {feed.id_column!r} is not a column of {feed.schema_name} "
            f"({', '.join(names)})"
        )
    clash = sorted(set(names) & set(ENGINE_COLUMNS))
    if clash:
        raise FeedConfigError(f"{where}: {feed.schema_name} uses reserved column name(s) {clash}")
    columns = []
    for column in model:
        kind, fmt = column.kind, feed.date_formats.get(column.name)
        if kind == "datetime":
            fmt = fmt or "ISO8601"
            kind = "datetime" if fmt == "ISO8601" or re.search(r"%[HIMSfp]", fmt) else "date"
        elif fmt:
            raise FeedConfigError(
                f"{where}.date_formats: {column.name!r} is not a DateTime column of "
                f"{feed.schema_name}"
            )
        columns.append(ColumnPlan(column.name, kind, column.nullable, column.description, fmt))
    unknown_formats = sorted(set(feed.date_formats) - set(names))
    if unknown_formats:
        raise FeedConfigError(f"{where}.date_formats: no such column(s) {unknown_formats}")
    unknown_tracked = sorted(set(feed.tracked_columns) - set(names))
    if unknown_tracked:
        raise FeedConfigError(f"{where}.tracked_columns: no such column(s) {unknown_tracked}")
    tracked = [c for c in (feed.tracked_columns or names) if c != feed.id_column]
    return FeedPlan(feed=feed, columns=columns, tracked=tracked,
                    by_name={column.name: column for column in columns})


def _row_schema(schema, columns: list[ColumnPlan]):
    """The model's schema less what the reader already guarantees, which pandera would otherwise
    pay for on every cell of every chunk:

    - a text column's dtype check: the reader yields only str or missing cells, so it cannot
      fail, and pandera's check maps `isinstance` over every cell (half the validation time);
    - a column left with nothing to check (nullable, no rules, no coercion): not validated;
    - `strict`: the header is checked once per file, before any row is read.

    Every rule of the model (nullability, checks, coercion, dataframe-wide checks) still runs.
    """
    kinds = {column.name: column.kind for column in columns}
    untyped = {name: {"dtype": None} for name, column in schema.columns.items()
               if kinds[name] == "text" and not column.coerce and not schema.coerce}
    relaxed = schema.update_columns(untyped)  # a copy: the plan's schema stays whole
    unchecked = [name for name, column in relaxed.columns.items()
                 if column.dtype is None and column.nullable and not column.checks
                 and not column.unique]
    if schema.checks or schema.unique:  # dataframe-wide rules need every column
        unchecked = []
    relaxed = relaxed.remove_columns(unchecked) if unchecked else relaxed
    relaxed.strict = False
    return relaxed


# What a yes/no cell may say, in any case: spreadsheets export TRUE/FALSE, people type yes/no.
BOOLEAN_WORDS = {**dict.fromkeys(("true", "t", "yes", "y", "1"), True),
                 **dict.fromkeys(("false", "f", "no", "n", "0"), False)}
NOT_A_BOOLEAN = "not true or false (true/false, yes/no or 1/0)"


def parse_booleans(cells: pd.Series) -> pd.Series:
    """The cells as pandas' nullable boolean, <NA> where a cell is empty or not a yes/no word.

    Every cell arrives as text, and pandas reads no text as a boolean (`astype("boolean")`
    refuses "true"), so a model's boolean column is read here, as dates are."""
    return cells.str.strip().str.lower().map(BOOLEAN_WORDS).astype("boolean")


def human_date_format(fmt: str) -> str:
    """`%d/%m/%Y` → `DD/MM/YYYY`, for messages people read."""
    if fmt == "ISO8601":
        return "YYYY-MM-DD"
    for directive, text in (("%d", "DD"), ("%m", "MM"), ("%Y", "YYYY"), ("%y", "YY"),
                            ("%H", "hh"), ("%M", "mm"), ("%S", "ss"), ("%b", "Mon"),
                            ("%B", "Month")):
        fmt = fmt.replace(directive, text)
    return fmt


@dataclass
class ChunkResult:
    good: pd.DataFrame  # typed, only rows that passed
    rejections: list[Rejection]
    rejected_ids: list[tuple[int, str]]  # (row number, id) of each rejected row that has an id
    blank_rows: int
    rows: int  # non-blank rows read


def validate_chunk(plan: FeedPlan, chunk: pd.DataFrame) -> ChunkResult:
    """Parse dates with the feed's formats and yes/no cells, then run the pandera schema lazily
    on one chunk."""
    from credflow_assets.drive_feeds.dates import parse_dates

    blank = chunk.isna().all(axis=1)
    chunk = (chunk.loc[~blank] if blank.any() else chunk).copy()
    rejections: list[Rejection] = []
    unparseable: set[tuple[int, str]] = set()
    for column in plan.columns:
        if column.kind in ("date", "datetime"):
            parsed = parse_dates(chunk[column.name], column.date_format)
            reason = f"not a date in the format {human_date_format(column.date_format)}"
        elif column.kind == "boolean":
            parsed, reason = parse_booleans(chunk[column.name]), NOT_A_BOOLEAN
        else:
            continue  # text, or a number pandera coerces
        raw = chunk[column.name]
        bad = raw.notna() & parsed.isna()
        for row_number, value in (raw[bad].items() if bad.any() else ()):
            rejections.append(Rejection(int(row_number), column.name, reason, _value(value)))
            unparseable.add((int(row_number), column.name))
        chunk[column.name] = parsed
    checked = list(plan.row_schema.columns)
    validated, failed = _run_schema(plan, chunk, checked, unparseable)
    rejections += failed
    rejected = {r.row_number for r in failed} | {row for row, _column in unparseable}
    good = chunk.drop(index=sorted(rejected)) if rejected else chunk
    if plan.needs_coercion and len(good):
        if rejected or validated is None:
            validated = plan.row_schema.validate(good[checked], lazy=True)
        good = good.assign(**{name: validated[name] for name in checked})
    rejected_ids = []
    if rejected:  # most chunks have none: no per-row work for them
        ids = chunk[plan.id_column]
        ids = ids[ids.index.isin(list(rejected)) & ids.notna()]
        rejected_ids = list(zip(ids.index.tolist(), ids.tolist()))
    rejections.sort(key=lambda r: (r.row_number, r.column))
    return ChunkResult(good=good, rejections=rejections, rejected_ids=rejected_ids,
                       blank_rows=int(blank.sum()), rows=len(chunk))


def _run_schema(plan: FeedPlan, chunk: pd.DataFrame, checked: list[str],
                unparseable: set[tuple[int, str]]):
    """(validated frame or None, rejections): pandera's failure cases, one per row and column.

    Each rule is first run on its own (`passes_every_rule`): when every row passes, as in most
    chunks, pandera's own run would find nothing, and its bookkeeping (failure-case tables,
    for every column) is what costs. Only a chunk with a failing row goes through pandera.
    """
    if plan.quick_checks and passes_every_rule(plan.row_schema, chunk):
        return None, []
    validated, failures = run_schema(plan.row_schema, chunk[checked])
    rejections = []
    for failure in failures:
        if failure.row is None:
            raise ValueError(f"column {failure.column}: {failure.check} (not a per-row problem)")
        if (failure.row, failure.column) in unparseable and failure.check == "not_nullable":
            continue  # already reported as an unparseable date
        rejections.append(Rejection(failure.row, failure.column, _reason(failure.check),
                                    _value(failure.value)))
    return validated, rejections


def _reason(check: Any) -> str:
    check = str(check)
    if check == "not_nullable":
        return "empty"
    if check.startswith("str_matches("):
        return "not in the expected form"
    if check.startswith("str_length("):
        return "wrong length"
    if check.startswith("isin("):
        return "not one of the allowed values"
    if check.startswith(("greater_than", "less_than", "in_range")):
        return f"out of range ({check})"
    if check.startswith("coerce_dtype("):
        return f"not a valid {check[len('coerce_dtype('):-1].strip(chr(39))}"
    return f"fails {check}"


def _value(value: Any) -> str | None:
    if is_missing(value):
        return None
    if hasattr(value, "strftime"):
        value = value.strftime("%Y-%m-%d")
    return str(value)[:MAX_VALUE_CHARS]
