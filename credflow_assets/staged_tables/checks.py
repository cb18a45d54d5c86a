"""The two blocking checks on a staged file, declared on its table's staged-file asset and yielded
by it.

Both run in the run that would promote the file (`staged_{table}_job`, one file per run), so a
failure stops the promotion: the prod and Glue steps of that run do not execute, the file stays
in staging untouched, and the Dagster UI shows the failed check on the file's partition of its
own table's asset (`s3/staging/{table}_staged_csv`).

- `columns_match_table`: the normalized header equals the table's columns, in order (see
  `columns.py` for where the table's columns come from). Names missing, extra and out-of-order
  columns.
- `rows_match_schema`: every row, streamed in chunks, against the table's pandera model (when
  configured), the Glue table's typed columns, and the header's field count (`validation.py`).

Each result's metadata names the file, the uploader's key (the staged object's S3 key) and
uploader (S3 metadata, when the upload carried one), the table, and what differs: columns, rules
and row numbers, never a cell's value (names, dates of birth are personal data, and Dagster's
event log is read by everyone). A failed result links the file's error report instead
(`errors_uri`, `errors_url`), which lists each problem with its value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import dagster as dg

from credflow_assets.staged_tables.columns import ColumnComparison, TableColumns
from credflow_assets.staged_tables.names import staging_file_key, table_partitions
from credflow_assets.staged_tables.validation import RowsReport

COLUMNS_CHECK = "columns_match_table"
ROWS_CHECK = "rows_match_schema"


def check_specs(table: str) -> list[dg.AssetCheckSpec]:
    """The two blocking checks of `table`'s staged-file asset."""
    # `partitions_def` on the spec records each result against the file's partition, so the UI
    # shows a file's checks on that file (without it, results are unpartitioned). It is a
    # preview in Dagster 1.13; its warning is silenced here, where the choice is made, rather
    # than at every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name=COLUMNS_CHECK,
                asset=staging_file_key(table),
                partitions_def=table_partitions(table),
                blocking=True,
                description=f"A staged {table} file's normalized columns are table {table}'s "
                "columns, in order (Glue reads CSV columns by position). Blocks the promotion.",
            ),
            dg.AssetCheckSpec(
                name=ROWS_CHECK,
                asset=staging_file_key(table),
                partitions_def=table_partitions(table),
                blocking=True,
                description=f"Every row of a staged {table} file fits the table's pandera model "
                "(where configured), the Glue table's typed columns and the header's field "
                "count. Blocks the promotion.",
            ),
        ]


# S3 user metadata that may name who uploaded a file (x-amz-meta-…), first match wins.
UPLOADER_METADATA_KEYS = ("uploaded-by", "uploaded_by", "uploader", "user", "owner", "author")


@dataclass(frozen=True)
class PromotedCopy:
    """Where an upload that a run promoted (and removed from staging) is read from again."""

    key: str  # prod/{table}/ingest_date=D/{name}
    etag: str  # the prod copy's own
    run_id: str  # the run that promoted it


@dataclass(frozen=True)
class StagedObject:
    """The staged upload a run checks: where it is and which version of it.

    `promoted` is set when the upload has left staging because an earlier run promoted it: its
    bytes are then read from that prod copy (`read_key`, `read_etag`), the upload's own key,
    etag and version still name it."""

    bucket: str
    key: str
    table: str
    name: str
    size: int
    etag: str
    last_modified: Any  # datetime, UTC
    version: str
    uploader: str | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    requested_ingest_date: str | None = None  # x-amz-meta-ingest-date, when a valid date
    # Why the upload's ingest-date cannot be used (not a date): the file is refused, since
    # the partition it asked for is unknown and the upload's date would be a guess.
    ingest_date_problem: str | None = None
    promoted: PromotedCopy | None = None

    @property
    def read_key(self) -> str:
        return self.promoted.key if self.promoted else self.key

    @property
    def read_etag(self) -> str:
        return self.promoted.etag if self.promoted else self.etag

    @property
    def read_uri(self) -> str:
        return f"s3://{self.bucket}/{self.read_key}"

    @property
    def ingest_date(self) -> str:
        """The partition the file joins: the date its upload names (`ingest-date` metadata,
        e.g. to load last month's export into last month's partition), else the UTC date it
        was uploaded to staging. Either way a rerun lands in the same partition."""
        return self.requested_ingest_date or self.last_modified.date().isoformat()


INGEST_DATE_METADATA_KEY = "ingest-date"


def requested_ingest_date(user_metadata: dict[str, str]) -> tuple[str | None, str | None]:
    """(the `ingest-date` the upload asks for, or None; the problem when it is not a date)."""
    from datetime import date

    value = {k.lower(): v for k, v in (user_metadata or {}).items()}.get(INGEST_DATE_METADATA_KEY)
    if not value:
        return None, None
    try:
        return date.fromisoformat(value.strip()).isoformat(), None
    except ValueError:
        return None, (f"its {INGEST_DATE_METADATA_KEY} metadata {value!r} is not a YYYY-MM-DD "
                      "date (leave it out to use the upload's date)")


def uploader_of(user_metadata: dict[str, str]) -> str | None:
    lowered = {key.lower(): value for key, value in (user_metadata or {}).items()}
    return next((lowered[key] for key in UPLOADER_METADATA_KEYS if lowered.get(key)), None)


def file_metadata(staged: StagedObject) -> dict[str, Any]:
    return {
        "file": dg.MetadataValue.path(staged.uri),
        "uploader_key": staged.key,
        "uploader": staged.uploader or "(not recorded: no uploaded-by metadata on the object)",
        "table": staged.table,
        "etag": staged.etag,
    }


def columns_check_result(
    staged: StagedObject,
    comparison: ColumnComparison | None,
    reference: TableColumns | None,
    raw_header: list[str] | None,
    header_error: str | None = None,
    error_report: dict[str, Any] | None = None,
) -> dg.AssetCheckResult:
    """`error_report`: the error report's links (`ErrorReport.metadata()`), added on failure."""
    if header_error is not None or comparison is None:
        description = f"{staged.key}: {header_error or 'no header'}"
        return dg.AssetCheckResult(
            check_name=COLUMNS_CHECK, asset_key=staging_file_key(staged.table), passed=False,
            description=description,
            metadata={**file_metadata(staged), "problem": header_error or "no header",
                      **(error_report or {})},
        )
    problems = comparison.problems()
    if comparison.passed:
        description = (f"{staged.key}: founds table {staged.table} with "
                       f"{len(comparison.actual)} column(s)" if comparison.founding
                       else f"{staged.key}: columns match table {staged.table}")
    else:
        description = f"{staged.key} (table {staged.table}): " + "; ".join(problems)
    metadata: dict[str, Any] = {
        **file_metadata(staged),
        "table_columns_from": reference.description if reference else "",
        "table_columns": dg.MetadataValue.json(comparison.expected or []),
        "file_columns": dg.MetadataValue.json(comparison.actual),
        "file_header": dg.MetadataValue.json(raw_header or []),
        "missing_columns": dg.MetadataValue.json(comparison.missing),
        "extra_columns": dg.MetadataValue.json(comparison.extra),
        "reordered_columns": dg.MetadataValue.json(comparison.reordered),
        "problems": dg.MetadataValue.json(problems),
    }
    if comparison.expected is not None:
        metadata["comparison"] = dg.MetadataValue.md(_columns_table(comparison))
    if not comparison.passed:
        metadata.update(error_report or {})
    return dg.AssetCheckResult(
        check_name=COLUMNS_CHECK, asset_key=staging_file_key(staged.table),
        passed=comparison.passed, description=description, metadata=metadata,
    )


def rows_check_result(staged: StagedObject, report: RowsReport | None,
                      not_run_reason: str | None = None,
                      error_report: dict[str, Any] | None = None) -> dg.AssetCheckResult:
    """`error_report`: the error report's links (`ErrorReport.metadata()`), added on failure."""
    if report is None:
        return dg.AssetCheckResult(
            check_name=ROWS_CHECK, asset_key=staging_file_key(staged.table), passed=False,
            description=f"{staged.key}: rows not checked: {not_run_reason}",
            metadata={**file_metadata(staged), "problem": not_run_reason or "",
                      **(error_report or {})},
        )
    metadata: dict[str, Any] = {
        **file_metadata(staged),
        "rows": report.rows,
        "validated_by": dg.MetadataValue.json(report.schemas or ["field count"]),
        "failures": report.failure_count,
        "failing_columns": dg.MetadataValue.json(report.failing_columns),
    }
    if report.file_error:
        metadata["file_error"] = report.file_error
    if report.by_check:
        metadata["failures_by_check"] = dg.MetadataValue.md(_table(
            ["validated by", "column", "check", "failures"],
            [[schema, column, check, count]
             for (schema, column, check), count in report.by_check.most_common()],
        ))
        # Where the failures are, never what the cells hold: the values are in the error report.
        metadata["failure_cases_sample"] = dg.MetadataValue.json(report.cases)
        metadata["failing_rows"] = report.failing_row_count
        metadata["failing_row_numbers"] = dg.MetadataValue.json(report.failing_row_numbers)
    if not report.passed:
        metadata.update(error_report or {})
    return dg.AssetCheckResult(
        check_name=ROWS_CHECK, asset_key=staging_file_key(staged.table), passed=report.passed,
        description=f"{staged.key}: {report.summary()}", metadata=metadata,
    )


def _columns_table(comparison: ColumnComparison) -> str:
    expected, actual = comparison.expected or [], comparison.actual
    rows = []
    for position in range(max(len(expected), len(actual))):
        table = expected[position] if position < len(expected) else ""
        file = actual[position] if position < len(actual) else ""
        rows.append([position + 1, table, file, "" if table == file else "≠"])
    return _table(["position", "table", "file", ""], rows)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |"
              for row in rows]
    return "\n".join(lines)
