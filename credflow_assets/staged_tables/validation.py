"""A staged file's rows, validated in one streaming pass: memory does not grow with the file.

The file is read with `pandas.read_csv(chunksize=…)`, every cell as text (an empty cell is a
null, nothing else is: `NA` and `null` stay text), under the normalized header plus one extra
column that catches rows with more fields than the header (pandas would otherwise drop them
silently, and Glue, reading by position, would shift them). Each chunk is validated, with
`lazy=True`, by:

- the table's pandera model, when the config names one (`schemas.py`);
- the Glue table's typed columns: a `bigint` column must hold integers in every row, and so on
  (an empty cell in a typed column makes Athena's CSV reader fail the whole query);
- the field count (no row may have more fields than the header).

When the Glue table does not exist yet, the same pass infers each column's type for it,
conservatively (`infer_glue_type`): a column is `bigint`, `double` or `boolean` only when every
row has a value of that form, and `string` otherwise. Dates stay `string`: Athena's CSV reader
is picky about date formats, and a string column never fails a query.

Failures are aggregated (counts per column and check), with a bounded sample of failure cases
and of the failing rows themselves for the check's metadata. Row numbers count data rows:
row 1 is the first line after the header.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

EXTRA_FIELDS = "__credflow_extra_fields__"
DEFAULT_CHUNK_ROWS = 50_000

# Values each Glue type accepts (the forms Athena's OpenCSVSerDe reads); other types: any text.
_INTEGER = r"^[+-]?(0|[1-9][0-9]{0,17})$"
_DECIMAL = r"^[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
_BOOLEAN = r"^(?i:true|false)$"
GLUE_TYPE_PATTERNS = {
    "bigint": _INTEGER, "int": _INTEGER, "integer": _INTEGER, "smallint": _INTEGER,
    "tinyint": _INTEGER, "double": _DECIMAL, "float": _DECIMAL, "boolean": _BOOLEAN,
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "timestamp": r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$",
}
# Inference prefers the narrowest type every value fits.
_INFERRED_ORDER = ("bigint", "double", "boolean")


def glue_type_pattern(glue_type: str) -> str | None:
    base = glue_type.lower().split("(", 1)[0].strip()
    if base == "decimal":
        return _DECIMAL
    return GLUE_TYPE_PATTERNS.get(base)


@dataclass
class TypeInference:
    """Per column: the Glue types every value so far fits, and whether any cell was empty."""

    columns: list[str]
    candidates: dict[str, set[str]] = field(default_factory=dict)
    has_null: set[str] = field(default_factory=set)
    rows: int = 0

    def __post_init__(self) -> None:
        self.candidates = {column: set(_INFERRED_ORDER) for column in self.columns}

    def update(self, frame: Any) -> None:
        self.rows += len(frame)
        for column in self.columns:
            values = frame[column]
            if values.isna().any():
                self.has_null.add(column)
                self.candidates[column].clear()
            for glue_type in list(self.candidates[column]):
                if not values.str.match(GLUE_TYPE_PATTERNS[glue_type]).all():
                    self.candidates[column].discard(glue_type)

    def result(self) -> dict[str, str]:
        return {column: infer_glue_type(self.candidates[column], self.rows,
                                        column in self.has_null)
                for column in self.columns}


def infer_glue_type(candidates: set[str], rows: int, has_null: bool) -> str:
    """`string` when in doubt: no rows, an empty cell, or values of mixed forms."""
    if not rows or has_null:
        return "string"
    return next((t for t in _INFERRED_ORDER if t in candidates), "string")


@dataclass
class RowsReport:
    """What the streaming pass found."""

    rows: int = 0
    schemas: list[str] = field(default_factory=list)  # what validated the rows
    failure_count: int = 0
    by_check: Counter = field(default_factory=Counter)  # (schema, column, check) → count
    cases: list[dict[str, Any]] = field(default_factory=list)  # a sample
    failing_rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # a sample
    file_error: str | None = None  # the file could not be read to the end
    inferred_types: dict[str, str] | None = None

    @property
    def passed(self) -> bool:
        return self.file_error is None and self.failure_count == 0

    @property
    def failing_columns(self) -> list[str]:
        return sorted({column for (_, column, _) in self.by_check})

    def summary(self) -> str:
        if self.file_error:
            return f"the file cannot be read: {self.file_error}"
        if self.passed:
            return f"{self.rows} row(s) valid ({', '.join(self.schemas) or 'field counts only'})"
        parts = [f"{count} × {column}: {check}"
                 for (_, column, check), count in self.by_check.most_common(8)]
        return (f"{self.failure_count} failure(s) in {self.rows} row(s): " + "; ".join(parts))


def glue_types_schema(glue_types: dict[str, str]):
    """A pandera schema holding every typed (non-string) Glue column to its type's form."""
    import pandera.pandas as pa

    columns = {}
    for column, glue_type in glue_types.items():
        pattern = glue_type_pattern(glue_type)
        if pattern is None:
            continue
        columns[column] = pa.Column(
            str, nullable=False, required=True,
            checks=pa.Check.str_matches(pattern, name=f"glue_type_{glue_type}",
                                        error=f"a {glue_type} value"),
        )
    return pa.DataFrameSchema(columns, name="glue_types", strict=False) if columns else None


def validate_rows(
    stream: IO[bytes],
    columns: list[str],
    *,
    model: Any = None,
    glue_types: dict[str, str] | None = None,
    infer_types: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    sample_size: int = 20,
) -> RowsReport:
    """Validate every row of a CSV stream whose header gave `columns` (normalized names).

    `model`: a pandera DataFrameModel class; `glue_types`: the Glue table's column types;
    `infer_types`: also infer Glue types (for a table that does not exist yet).
    """
    import pandas as pd

    report = RowsReport()
    names = _unique_names(columns)
    schemas: list[tuple[str, Any]] = []
    if model is not None:
        schemas.append((model.__name__, model))
    typed = glue_types_schema(glue_types or {})
    if typed is not None:
        schemas.append(("glue column types", typed))
    report.schemas = [name for name, _ in schemas]
    inference = TypeInference(names) if infer_types else None
    reported_schema_level: set[tuple[str, str, str]] = set()

    try:
        chunks = pd.read_csv(
            stream, header=None, skiprows=1, names=[*names, EXTRA_FIELDS], dtype=str,
            keep_default_na=False, na_values=[""], index_col=False, chunksize=chunk_rows,
            encoding="utf-8-sig", encoding_errors="strict",
        )
        for chunk in chunks:
            report.rows += len(chunk)
            _count_extra_fields(report, chunk, sample_size)
            frame = chunk.drop(columns=[EXTRA_FIELDS])
            for schema_name, schema in schemas:
                _validate_chunk(report, schema_name, schema, frame, sample_size,
                                reported_schema_level)
            if inference is not None:
                inference.update(frame)
    except UnicodeDecodeError as error:
        report.file_error = (f"not UTF-8 text ({error.reason} at byte {error.start} of a "
                             "block): save the file as CSV UTF-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        report.file_error = f"not valid CSV: {str(error).strip().splitlines()[0]}"
    if inference is not None and report.file_error is None:
        report.inferred_types = dict(zip(columns, inference.result().values()))
    return report


def _unique_names(columns: list[str]) -> list[str]:
    """pandas needs unique, non-empty names; a bad header is the columns check's to report."""
    names, seen = [], Counter()
    for position, column in enumerate(columns, 1):
        name = column or f"column_{position}"
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}__{seen[name]}")
    return names


def _count_extra_fields(report: RowsReport, chunk: Any, sample_size: int) -> None:
    extra = chunk[EXTRA_FIELDS].notna()
    if not extra.any():
        return
    for index in chunk.index[extra]:
        _record(report, "field count", "(extra fields)", "more fields than the header",
                int(index) + 1, chunk.at[index, EXTRA_FIELDS], chunk.loc[index], sample_size)


def _validate_chunk(report, schema_name, schema, frame, sample_size, reported) -> None:
    import pandera.pandas as pa

    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for case in errors.failure_cases.itertuples(index=False):
            column = str(case.column) if case.column is not None else ""
            check = str(case.check)
            value = None if _is_missing(case.failure_case) else str(case.failure_case)
            if _is_missing(case.index):
                # Column-level (missing, extra, out-of-order column): once per file, not per chunk.
                identity = (schema_name, column, f"{check}: {value}")
                if identity in reported:
                    continue
                reported.add(identity)
                # pandera names the schema as the "column" of a column-set failure and the
                # offending column as its failure case: report the column itself.
                schema_names = {"", schema_name, str(getattr(schema, "name", "") or ""),
                                getattr(schema, "__name__", "")}
                named = value if value and column in schema_names else column
                _record(report, schema_name, named or "(columns)", check, None, value, None,
                        sample_size)
            else:
                index = int(case.index)
                _record(report, schema_name, column, check, index + 1, value,
                        frame.loc[index] if index in frame.index else None, sample_size)


def _record(report: RowsReport, schema: str, column: str, check: str, row: int | None,
            value: Any, row_values: Any, sample_size: int) -> None:
    report.failure_count += 1
    report.by_check[(schema, column, check)] += 1
    if len(report.cases) < sample_size:
        report.cases.append({"row": row, "column": column, "check": check,
                             "value": None if _is_missing(value) else str(value),
                             "schema": schema})
    if row is not None and row_values is not None and (
        row in report.failing_rows or len(report.failing_rows) < min(sample_size, 10)
    ):
        report.failing_rows[row] = {
            name: (None if _is_missing(v) else str(v))
            for name, v in row_values.items() if name != EXTRA_FIELDS or not _is_missing(v)
        }


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return value != value  # NaN
    except Exception:  # noqa: BLE001 - odd objects are simply present
        return False
