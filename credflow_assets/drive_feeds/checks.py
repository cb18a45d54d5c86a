"""The pandera schema check of each feed, declared on its table asset (`tables/{feed}_records`).

Blocking: a file whose header does not match the model (or that cannot be read as a sheet)
fails the check with ERROR severity before anything is written, naming the missing, unexpected
and repeated columns, and the file is a failed partition. Rows that break the model's rules do
not block: they are rejected, the check reports them (WARN) by row number, column and kind of
problem, and the good rows go in. No cell values appear here: they may be personal data; they
are in the file's error report, which a failed or warning result links (`errors_url`).
"""

from __future__ import annotations

import warnings

import dagster as dg

from credflow_assets.drive_feeds.ingest import IngestReport, SourceFile
from credflow_assets.drive_feeds.names import feed_partitions, records_key
from credflow_assets.drive_feeds.sheets import HeaderProblem
from credflow_assets.drive_feeds.validation import FeedPlan

CHECK_NAME = "pandera_schema"


def schema_check_spec(plan: FeedPlan) -> dg.AssetCheckSpec:
    # `partitions_def` records each result against the file's partition, so the UI shows each
    # file's verdict. A preview in Dagster 1.13: its warning is silenced where the choice is made.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        return _schema_check_spec(plan)


def _schema_check_spec(plan: FeedPlan) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name=CHECK_NAME,
        asset=records_key(plan.name),
        partitions_def=feed_partitions(plan.name),
        blocking=True,
        description=(
            f"The sheet matches {plan.feed.schema_name}: its headers exactly (blocking: a wrong or "
            f"missing header fails the file before anything is written), and each row its rules "
            f"(a bad row is rejected and listed; the good rows go in)."
        ),
    )


def _file_metadata(source: SourceFile) -> dict:
    return {"file": source.name, "drive_file_id": source.file_id, "revision": source.revision}


def header_failure(plan: FeedPlan, source: SourceFile, problem: HeaderProblem,
                   header: list[str], error_report: dict | None = None) -> dg.AssetCheckResult:
    """`error_report`: the file's error report links (`ErrorReport.metadata()`)."""
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        asset_key=records_key(plan.name),
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{source.name}: {problem.describe()}",
        metadata={
            **_file_metadata(source),
            "missing_columns": dg.MetadataValue.json(problem.missing),
            "unexpected_columns": dg.MetadataValue.json(problem.unexpected),
            "repeated_columns": dg.MetadataValue.json(problem.duplicated),
            # Row 1 holding none of the feed's columns may be a row of data: not shown.
            "file_columns": dg.MetadataValue.json(
                [] if problem.not_a_header else header),
            "expected_columns": dg.MetadataValue.json(plan.column_names),
            **(error_report or {}),
        },
    )


def unreadable_file(plan: FeedPlan, source: SourceFile, problem: str,
                    error_report: dict | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        asset_key=records_key(plan.name),
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{source.name}: {problem}",
        metadata={**_file_metadata(source), "problem": problem, **(error_report or {})},
    )


def rows_result(plan: FeedPlan, source: SourceFile, report: IngestReport,
                error_report: dict | None = None) -> dg.AssetCheckResult:
    """`error_report`: the file's error report links, shown when rows were rejected."""
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        asset_key=records_key(plan.name),
        passed=report.rejected == 0,
        # Bad rows are rejected and listed, not a reason to hold back the good ones.
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{report.rejected} of {report.rows_read} row(s) rejected"
                     if report.rejected else f"all {report.rows_read} row(s) valid"),
        metadata={
            **_file_metadata(source),
            "rows_read": report.rows_read,
            "rejected_rows": report.rejected,
            "rejections_by_reason": dg.MetadataValue.json(report.reasons),
            "sample": dg.MetadataValue.md(rejection_table(report.rejection_sample)),
            **((error_report or {}) if report.rejected else {}),
        },
    )


def rejection_table(sample: list[tuple[int, str, str]]) -> str:
    if not sample:
        return "no rejected rows"
    lines = ["| row | column | reason |", "|---|---|---|"]
    lines += [f"| {row} | {column} | {reason.replace('|', '/')} |" for row, column, reason in sample]
    return "\n".join(lines)
