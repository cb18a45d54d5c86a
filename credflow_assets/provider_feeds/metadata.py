"""What each of a provider file's two materializations tells a person: sizes, links, counts,
seconds (`timed` measures them).

The raw copy's materialization also carries the raw copy itself (`raw_copy`,
machine-readable): reruns, and a landing materialized alone, read the raw copy from there; the
sensor reads it to recognise a version already stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import dagster as dg

from credflow_assets.provider_feeds.failures import FileRef
from credflow_assets.provider_feeds.limits import human_size
from credflow_assets.provider_feeds.names import mtime_date
from credflow_assets.provider_feeds.settings import ProviderFeedsSettings
from credflow_assets.resources.s3 import object_url, s3_uri


def raw_result(client, copy: dict[str, Any], *, reused: bool, seconds: dict[str, float],
               asset_key: dg.AssetKey) -> dg.MaterializeResult:
    signature = copy.get("signature")
    links = {"raw_url": dg.MetadataValue.url(object_url(client, copy["bucket"], copy["key"]))}
    if signature:
        links["signature_url"] = dg.MetadataValue.url(
            object_url(client, copy["bucket"], signature["key"]))
    return dg.MaterializeResult(
        asset_key=asset_key,
        metadata={
            "provider": copy["provider"],
            "remote_path": copy["remote_path"],
            "raw_uri": dg.MetadataValue.path(s3_uri(copy["bucket"], copy["key"])),
            "size": copy["size"],
            "sha256": copy["sha256"],
            "remote_modified": f"{mtime_date(copy['remote_mtime'])} (mtime {copy['remote_mtime']})",
            "signature_uri": dg.MetadataValue.path(s3_uri(copy["bucket"], signature["key"]))
            if signature else "none",
            **links,
            "reused_raw_copy": reused,
            "seconds_download": round(seconds.get("download", 0.0), 3),
            "seconds_upload": round(seconds.get("upload", 0.0), 3),
            # Machine-readable: reruns and a landing run alone read the raw copy from here.
            "raw_copy": dg.MetadataValue.json(copy),
        }
    )


def landed_metadata(client, ref: FileRef, copy: dict[str, Any], raw_uri: str, found: str,
                     encrypted: bool, signer: Optional[str], landed: list[dict],
                     seconds: dict[str, float], settings: ProviderFeedsSettings) -> dict:
    by_type: dict[str, int] = {}
    for entry in landed:
        by_type[entry["type"]] = by_type.get(entry["type"], 0) + 1
    rows = [entry["rows"] for entry in landed if entry["rows"] is not None]
    total_bytes = sum(entry["size"] for entry in landed)
    summary = f"{len(landed)} file(s) landed" + (
        ": " + ", ".join(f"{count} {kind}" for kind, count in sorted(by_type.items()))
        if landed else "") + (f"; {sum(rows):,} CSV row(s)" if rows else "") + (
        f"; {human_size(total_bytes)}")
    table = ["| S3 key | type | size | rows |", "|---|---|---|---|"] + [
        f"| [s3://{settings.bucket}/{entry['key']}]"
        f"({object_url(client, settings.bucket, entry['key'])}) | {entry['type']} | "
        f"{entry['size']:,} | "
        f"{'' if entry['rows'] is None else format(entry['rows'], ',')} |"
        for entry in landed
    ]
    return {
        "provider": ref.provider,
        "remote_path": ref.remote_path,
        "summary": summary,
        "raw_uri": dg.MetadataValue.path(raw_uri),
        "raw_url": dg.MetadataValue.url(object_url(client, copy["bucket"], copy["key"])),
        "raw_sha256": copy["sha256"],
        "signature": f"verified: {signer}" if signer else "none",
        "encrypted": encrypted,
        "compression": found,
        "landed_files": len(landed),
        "landed_keys": dg.MetadataValue.json([entry["key"] for entry in landed]),
        "landed": dg.MetadataValue.json(landed),
        "files": dg.MetadataValue.md("\n".join(table)),
        "bytes_landed": total_bytes,
        "csv_rows": sum(rows),
        **{f"seconds_{stage}": round(seconds.get(stage, 0.0), 3)
           for stage in ("fetch_raw", "verify", "decrypt", "decompress", "upload")},
    }


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the time the block takes to `seconds[stage]` (the `seconds_{stage}` metadata)."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - started
