"""What a person reads about a rejected staged file.

- `rejection_sentence`: one sentence naming the file and what is wrong with it, ending with what
  to do. The staged-file step fails with it (a `dg.Failure`), so `credflow sync`'s FAILED line,
  the run's failure in the Dagster UI and the failure notification all read the same words:

      staging/claims/x.csv: columns out of order: last_name, first_name; extra column: notes.
      Upload a corrected file to the same key.

  Columns, rules and row numbers only: a cell's value is personal data, kept in the file's error
  report (`credflow_assets.common.error_reports`).
- `report_header_problems`: the header's problems as lines of that error report, beside the
  rows' (which `validation.validate_rows` reports).
"""

from __future__ import annotations

from credflow_assets.common.error_reports import ErrorReport
from credflow_assets.staged_tables.columns import ColumnComparison
from credflow_assets.staged_tables.layout import PARTITION_COLUMN
from credflow_assets.staged_tables.validation import (
    ATHENA_READER,
    EMPTY_ROW_COLUMN,
    EXTRA_FIELDS_COLUMN,
    MISREAD_VALUES,
    RowsReport,
)

WHAT_TO_DO = "Upload a corrected file to the same key."
# Row numbers a sentence names before it says "and N more".
NAMED_ROWS = 5


def rejection_sentence(key: str, comparison: ColumnComparison | None, header_error: str | None,
                       report: RowsReport | None, *, error_report_stored: bool = False,
                       upload_problem: str | None = None) -> str:
    """`upload_problem`: what is wrong with the upload itself (its metadata), said first; the
    file's own problems follow, if it has any."""
    problems = [problem for problem in (
        upload_problem, what_is_wrong(comparison, header_error, report, error_report_stored))
        if problem]
    return f"{key}: {'; '.join(problems or ['rejected'])}. {WHAT_TO_DO}"


def what_is_wrong(comparison: ColumnComparison | None, header_error: str | None,
                  report: RowsReport | None, error_report_stored: bool = False) -> str | None:
    """What is wrong with the file itself; None when its columns and rows passed."""
    if header_error is not None or comparison is None:
        return header_error or "no header"
    if not comparison.passed:
        # The rows are read under the file's header: with wrong columns their failures follow
        # from it (a name in the date column), so the columns are what to fix first.
        return "; ".join(column_phrases(comparison))
    if report is not None and not report.passed:
        return rows_phrase(report) + ("; its error report lists each value"
                                      if error_report_stored and not report.file_error else "")
    return None


def column_phrases(comparison: ColumnComparison) -> list[str]:
    """`missing column: amount_usd`, `columns out of order: last_name, first_name`, …"""
    phrases = []
    if not comparison.actual:
        phrases.append("no columns")
    if comparison.missing:
        phrases.append(_listed("missing column", comparison.missing))
    if comparison.reordered:
        phrases.append(_listed("column out of order", [item["column"]
                                                       for item in comparison.reordered],
                               plural="columns out of order"))
    if comparison.extra:
        phrases.append(_listed("extra column", comparison.extra))
    if comparison.duplicates:
        phrases.append(_listed("duplicate column", comparison.duplicates))
    if comparison.unnamed_positions:
        phrases.append(_listed("unnamed column at position",
                               [str(p) for p in comparison.unnamed_positions],
                               plural="unnamed columns at positions"))
    if comparison.invalid_names:
        phrases.append(_listed("column name Athena cannot use (only a-z, 0-9, _)",
                               comparison.invalid_names,
                               plural="column names Athena cannot use (only a-z, 0-9, _)"))
    if comparison.partition_column_clash:
        phrases.append(f"a column named {PARTITION_COLUMN}, the table's partition column")
    return phrases


def rows_phrase(report: RowsReport) -> str:
    """`rows 1, 2 break the table's rules (service_date, amount_usd, status)`: the failing
    columns in the file's order, extra fields last; a column holding what Athena would misread
    (a line break, a backslash) says so, since no rule of the table's explains it."""
    if report.file_error:
        return report.file_error
    position = {column: index for index, column in enumerate(report.columns)}
    short_names = {rule: short for _, rule, short in MISREAD_VALUES}
    misread: dict[str, list[str]] = {}  # column → what Athena would misread in it
    for schema, column, check in report.by_check:
        if schema == ATHENA_READER and check in short_names:
            misread.setdefault(column, []).append(short_names[check])

    def as_listed(column: str) -> str:
        if column == EXTRA_FIELDS_COLUMN:
            return "more fields than the header"
        if column == EMPTY_ROW_COLUMN:
            return "no value in any column"
        return f"{column}: {', '.join(misread[column])}" if column in misread else column

    columns = ", ".join(
        as_listed(column) for column in sorted(
            report.failing_columns, key=lambda column: (position.get(column, len(position)),
                                                        column)))
    count, named = report.failing_row_count, report.failing_row_numbers[:NAMED_ROWS]
    if not count:  # pandera found only column-level failures
        return f"the columns break the table's rules ({columns})"
    rows = ", ".join(str(row) for row in named)
    if count > len(named):
        rows += f" and {count - len(named)} more"
    return (f"row {rows} breaks" if count == 1 else f"rows {rows} break") + \
        f" the table's rules ({columns})"


def report_header_problems(errors: ErrorReport, comparison: ColumnComparison | None,
                           header_error: str | None) -> None:
    """The header's problems, one error-report line each (no row: they are the header's)."""
    if header_error is not None or comparison is None:
        errors.add(None, "", header_error or "no header")
        return
    for column in comparison.missing:
        errors.add(None, column, "missing column (the table has it)")
    for item in comparison.reordered:
        errors.add(None, item["column"], f"out of order: table position "
                   f"{item['table_position']}, file position {item['file_position']}")
    for column in comparison.extra:
        errors.add(None, column, "extra column (not in the table)")
    for column in comparison.duplicates:
        errors.add(None, column, "duplicate column")
    for position in comparison.unnamed_positions:
        errors.add(None, f"(position {position})", "unnamed column")
    for column in comparison.invalid_names:
        errors.add(None, column, "a name Athena cannot use (only a-z, 0-9, _)")
    if comparison.partition_column_clash:
        errors.add(None, PARTITION_COLUMN, "the table's partition column")


def _listed(singular: str, names: list[str], *, plural: str | None = None) -> str:
    label = singular if len(names) == 1 else (plural or singular + "s")
    return f"{label}: {', '.join(names)}"
