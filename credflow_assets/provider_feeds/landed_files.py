"""One file resulting from a landing → `data/{csv|pdf|xml|other}/{folder}/{name}` in S3.

The file is typed by its first bytes, its CSV records are counted on the way, and it is
uploaded from its chunks in one streaming multipart upload (recorded in the run, so that a
killed run's is aborted: `open_uploads.py`), its object metadata naming the raw copy it came
from.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from credflow_assets.provider_feeds.failures import FileRef
from credflow_assets.provider_feeds.limits import ExpansionLimit
from credflow_assets.provider_feeds.memory import limit_malloc_arenas, release_freed_memory
from credflow_assets.provider_feeds.metadata import timed
from credflow_assets.provider_feeds.names import landed_key
from credflow_assets.provider_feeds.open_uploads import RunUploads
from credflow_assets.provider_feeds.settings import ProviderFeed, ProviderFeedsSettings
from credflow_assets.provider_feeds.streams import UploadSource
from credflow_assets.provider_feeds.unpack import CONTENT_TYPES, HEAD_BYTES, detect_type_of_head
from credflow_assets.resources.s3 import upload_stream


def land_one(client, settings: ProviderFeedsSettings, feed: ProviderFeed, ref: FileRef,
             copy: dict[str, Any], name: str, chunks, seconds: dict[str, float], *,
             limit: ExpansionLimit, uploads: RunUploads) -> tuple[dict[str, Any], float]:
    """Upload one resulting file from its chunks, typing it by its first bytes and counting
    CSV records on the way; returns its `landed` entry and the seconds spent producing the
    bytes (decompression, when the chunks come from the decompressor)."""
    source = UploadSource(chunks)
    category = detect_type_of_head(source.head(HEAD_BYTES), name)
    counter = None
    if category == "csv":
        # Imported here: rows.py needs numpy, which no other flow's run process loads.
        from credflow_assets.provider_feeds.rows import CsvRecordCounter

        counter = CsvRecordCounter(delimiter="\t" if name.lower().endswith(".tsv") else ",")
        source.observe = counter.feed
    key = landed_key(category, feed.folder, name)
    limit_malloc_arenas()  # before the upload's threads start (see memory.py)
    with timed(seconds, "upload"):
        upload_stream(
            client, source, settings.bucket, key,
            max_concurrency=settings.upload_concurrency,
            part_size=settings.part_size(limit.max_bytes),  # no file is bigger
            **uploads.callbacks(key),
            extra_args={
                "ContentType": CONTENT_TYPES[category],
                "Metadata": {"provider": ref.provider,
                             "source-raw-key": quote(copy["key"]),
                             "source-sha256": copy["sha256"]},
            },
        )
    release_freed_memory()  # the upload's freed part buffers (see memory.py)
    entry = {"key": key, "name": name, "type": category, "size": source.size,
             "rows": counter.data_rows if counter else None}
    if counter is not None and counter.note:
        entry["rows_note"] = counter.note
    return entry, source.seconds
