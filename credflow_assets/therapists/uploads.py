"""The signup bucket's layout: `{therapist_id}/{file name}`, and what a therapist has uploaded."""

from __future__ import annotations

import hashlib

from credflow_assets.common.partitions import is_valid_partition_key
from credflow_assets.resources.s3 import iter_objects


def therapist_id_of(key: str) -> str | None:
    """`{therapist_id}/{file}` → therapist_id; None for keys outside that shape."""
    therapist_id, slash, name = key.partition("/")
    if not slash or not name or name.endswith("/") or not is_valid_partition_key(therapist_id):
        return None
    return therapist_id


def list_uploads(client, bucket: str, therapist_id: str) -> list[dict]:
    """The therapist's uploads: key, size, etag (unquoted) and last_modified."""
    return [
        {"key": item["Key"], "size": item["Size"], "etag": item["ETag"].strip('"'),
         "last_modified": item["LastModified"].isoformat()}
        for item in iter_objects(client, bucket, prefix=f"{therapist_id}/")
        if therapist_id_of(item["Key"]) == therapist_id
    ]


def uploads_fingerprint(objects: list[tuple[str, str]]) -> str:
    """A digest of (key, etag) pairs: what a therapist has uploaded, independent of order."""
    digest = hashlib.sha256()
    for key, etag in sorted(objects):
        digest.update(f"{key}\0{etag}\n".encode())
    return digest.hexdigest()[:24]
