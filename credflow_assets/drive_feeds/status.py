"""What each feed holds, for the terminal (`credflow feeds status`, `make demo`): its table's
row and change-history counts, its latest processed files with their counts, and the summaries in
its outbound folder. Counts and file names only, never row contents."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from credflow_assets.config import CredflowConfig
    from credflow_assets.resources.drive import DriveResource


def feed_status_lines(config: CredflowConfig, engine: Engine, drive: DriveResource,
                      latest: int = 5) -> list[str]:
    from credflow_assets.drive_feeds.names import SUMMARY_FEED
    from credflow_assets.drive_feeds.store import FeedTables, ensure_bookkeeping, files_table
    from credflow_assets.drive_feeds.validation import build_plan

    ensure_bookkeeping(engine)
    lines = []
    for feed in config.feeds:
        tables = FeedTables(build_plan(feed))
        tables.ensure(engine)
        with engine.connect() as connection:
            count = connection.execute(
                sa.select(sa.func.count()).select_from(tables.records)).scalar_one()
            changes = connection.execute(
                sa.select(sa.func.count()).select_from(tables.history)).scalar_one()
            files = connection.execute(
                sa.select(files_table).where(files_table.c.feed == feed.name)
                .order_by(files_table.c.processed_at.desc()).limit(latest)).mappings().all()
        lines.append(f"{feed.name}: {count:,} row(s) in {feed.table}, "
                     f"{changes:,} change-history row(s)")
        for file in files:
            lines.append(
                f"  {file['file_name']} ({file['file_id']}, revision {file['revision'][:12]}): "
                f"{file['rows_read']:,} read, {file['inserted']:,} inserted, "
                f"{file['updated']:,} updated, {file['unchanged']:,} unchanged, "
                + (f"{file['kept_newer']:,} kept (a later file wrote them), "
                   if file.get("kept_newer") else "")
                + f"{file['rejected']:,} rejected")
        summaries = [f for f in drive.list_files(
            f"'{feed.outbound_folder_id}' in parents and trashed = false", order_by="createdTime")
            if (f.get("appProperties") or {}).get(SUMMARY_FEED) == feed.name]
        lines.append(f"  outbound folder: {len(summaries)} summary file(s)"
                     + (f", latest {summaries[-1]['name']!r}" if summaries else ""))
    return lines
