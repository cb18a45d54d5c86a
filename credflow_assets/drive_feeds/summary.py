"""The outbound summary: one text file per processed inbound file revision, in the feed's
outbound Drive folder, found again by its appProperties (inbound file id and revision), never by
name. It is a report for people: nothing reads it back, so deleting it changes nothing."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from credflow_assets.drive_feeds.names import (
    SUMMARY_FEED,
    SUMMARY_INBOUND_ID,
    SUMMARY_INBOUND_REVISION,
)

if TYPE_CHECKING:
    from credflow_assets.config import FeedConfig
    from credflow_assets.resources.drive import DriveResource

SUMMARY_MIME = "text/plain"
# Every row read is in one of inserted, updated, unchanged, kept or rejected.
COUNTS = (("rows read", "rows_read"), ("inserted", "inserted"), ("updated", "updated"),
          ("unchanged", "unchanged"),
          ("kept as a later-modified file wrote them", "kept_newer"),
          ("rejected", "rejected"),
          ("blank rows skipped", "blank_rows"), ("change-history rows", "history_rows"))
NOTES_HEADING = "notes:"
REJECTED_HEADING = "rejected rows (row numbers count the header as row 1, as a spreadsheet does):"


def summary_name(record: dict) -> str:
    processed: datetime = record["processed_at"]
    return f"{Path(record['file_name']).stem} - summary {processed:%Y-%m-%d %H%M} UTC.txt"


def write_summary(path: Path, feed: FeedConfig, record: dict, rejections) -> Path:
    """The summary text: the file, its counts, then its rejected rows as a CSV block."""
    processed = record["processed_at"]
    lines = [
        "credflow: summary of an inbound file",
        "",
        f"feed: {feed.name} (table {feed.table})",
        f"inbound file: {record['file_name']}",
        f"drive file id: {record['file_id']}",
        f"revision: {record['revision']}",
        f"modified: {record.get('modified_time') or ''}",
        f"processed: {processed:%Y-%m-%d %H:%M:%S} UTC (run {record.get('run_id') or '-'})",
        "",
        *(f"{label}: {record.get(key) or 0}" for label, key in COUNTS),
        "",
        *_notes(record),
    ]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("\n".join(lines) + "\n")
        if not record["rejected"]:
            handle.write("rejected rows: none\n")
            return path
        handle.write(REJECTED_HEADING + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["row", "column", "reason", "value"])
        for rejection in rejections:
            writer.writerow([rejection.row_number, rejection.column_name, rejection.reason,
                             rejection.value or ""])
    return path


def _notes(record: dict) -> list[str]:
    """What of the file was not read as rows, and how it was read: said, not skipped silently."""
    notes = (record.get("notes") or "").splitlines()
    if not notes:
        return []
    return [NOTES_HEADING, *(f"- {note}" for note in notes), ""]


def parse_summary(text: str) -> dict:
    """The counts, notes and rejected rows of a summary file (for tests and tools)."""
    head, _, rejected = text.partition(REJECTED_HEADING)
    counts, notes = {}, []
    for line in head.splitlines():
        if line.startswith("- "):
            notes.append(line[2:])
            continue
        label, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            counts[label] = int(value)
    rows = list(csv.DictReader(io.StringIO(rejected.lstrip("\n")))) if rejected else []
    return {"counts": counts, "notes": notes, "rejected_rows": rows}


def find_summary(drive: DriveResource, feed: FeedConfig, file_id: str, revision: str) -> list[dict]:
    return [
        file for file in drive.find_children_by_app_property(
            feed.outbound_folder_id, SUMMARY_INBOUND_ID, file_id)
        if (file.get("appProperties") or {}).get(SUMMARY_INBOUND_REVISION) == revision
    ]


def publish_summary(drive: DriveResource, feed: FeedConfig, record: dict,
                    path: Path) -> tuple[dict, str]:
    """Create the summary, or replace the content of the one this revision already has
    (a reparse). Returns the Drive file and what was done."""
    name = summary_name(record)
    existing = find_summary(drive, feed, record["file_id"], record["revision"])
    if existing:
        updated = drive.update_file(existing[0]["id"], name=name, local_path=path,
                                    mime_type=SUMMARY_MIME)
        return updated, "replaced"
    created = drive.upload_file(
        path, name, feed.outbound_folder_id, mime_type=SUMMARY_MIME,
        app_properties={SUMMARY_FEED: feed.name, SUMMARY_INBOUND_ID: record["file_id"],
                        SUMMARY_INBOUND_REVISION: record["revision"]},
    )
    return created, "created"
