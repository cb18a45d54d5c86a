"""What the Dagster UI shows of a feed's table (`tables/{feed}_records`).

Declared on the asset: the table's column schema and name. On each materialization: the table's
size, what the file did to it (counts, speed) and why rows were rejected, by row number, column
and reason only: no cell values, which may be personal data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from credflow_assets.drive_feeds.checks import rejection_table
from credflow_assets.drive_feeds.validation import ENGINE_COLUMNS, FeedPlan

if TYPE_CHECKING:
    from credflow_assets.drive_feeds.ingest import IngestReport, SourceFile


def table_schema(plan: FeedPlan) -> dg.TableSchema:
    columns = [
        dg.TableColumn(
            name=column.name,
            type=column.kind if not column.date_format or column.date_format == "ISO8601"
            else f"{column.kind} (read as {column.date_format})",
            description=column.description,
            constraints=dg.TableColumnConstraints(
                nullable=column.name != plan.id_column and column.nullable,
                unique=column.name == plan.id_column,
            ),
        )
        for column in plan.columns
    ]
    columns += [dg.TableColumn(name=name, type="datetime" if name.endswith("_at") else "text",
                               description="set by credflow")
                for name in ENGINE_COLUMNS]
    return dg.TableSchema(columns=columns)


def table_metadata(**values) -> dict:
    """Dagster's table metadata keys (what `TableMetadataSet` writes; it is not exported by
    dagster 1.13): `dagster/column_schema`, `dagster/row_count`, `dagster/table_name`, …"""
    return {f"dagster/{key}": value for key, value in values.items() if value is not None}


def static_records_metadata(plan: FeedPlan) -> dict:
    """The metadata declared on the asset, before any file is ingested."""
    feed = plan.feed
    return {**table_metadata(column_schema=table_schema(plan), table_name=feed.table),
            "feed": feed.name, "schema": feed.schema_name}


def ingested_file_metadata(plan: FeedPlan, source: SourceFile, report: IngestReport,
                           storage_kind: str) -> dict:
    """The materialization's metadata for one ingested file."""
    return {
        **table_metadata(column_schema=table_schema(plan), table_name=plan.feed.table,
                         row_count=report.table_rows, partition_row_count=report.accepted,
                         storage_kind=storage_kind),
        "file": source.name, "drive_file_id": source.file_id, "revision": source.revision,
        "rows_read": report.rows_read, "inserted": report.inserted,
        "updated": report.updated, "unchanged": report.unchanged,
        "kept_newer": report.kept_newer,
        "rejected": report.rejected, "blank_rows": report.blank_rows,
        "history_rows": report.history_rows,
        "seconds": round(report.seconds, 2),
        "rows_per_second": round(report.rows_read / report.seconds) if report.seconds else 0,
        "rejections_by_reason": dg.MetadataValue.json(report.reasons),
        "rejected_rows_sample": dg.MetadataValue.md(rejection_table(report.rejection_sample)),
        "rejected_rows_by_rule": dg.MetadataValue.json(rows_by_rule(report.rejection_sample)),
        "notes": dg.MetadataValue.json(report.notes),
    }


def rows_by_rule(sample: list[tuple[int, str, str]]) -> dict[str, list[int]]:
    """The sample's row numbers by rule (`column: rule`, the keys of `rejections_by_reason`):
    what the uploader's e-mail lists (common/rejected_rows_mail.py). Numbers, never values."""
    from credflow_assets.drive_feeds.ingest import rule_of

    rules: dict[str, list[int]] = {}
    for row, column, reason in sample:
        numbers = rules.setdefault(rule_of(column, reason), [])
        if row not in numbers:
            numbers.append(row)
    return rules
