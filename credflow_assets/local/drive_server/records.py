"""What stored Drive state looks like to a client: file ids, times, uploaded media waiting
to be stored, and the File resource built from a stored row with its parents and properties."""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .query import FOLDER_MIME

GOOGLE_APPS_PREFIX = "application/vnd.google-apps."
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass
class Media:
    """Uploaded content waiting in a file under the state dir."""

    path: Path
    content_type: str
    size: int
    md5: str


def rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def new_id() -> str:
    return "1" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(32))


def file_resource(row: sqlite3.Row, parents: list[str], props: dict, base_url: str) -> dict:
    mime = row["mime_type"]
    folder = mime == FOLDER_MIME
    resource: dict[str, Any] = {
        "kind": "drive#file",
        "id": row["id"],
        "name": row["name"],
        "mimeType": mime,
        "parents": parents,
        "createdTime": rfc3339(row["created_ms"]),
        "modifiedTime": rfc3339(row["modified_ms"]),
        "trashed": bool(row["trashed"]),
        "explicitlyTrashed": bool(row["explicitly_trashed"]),
        "version": str(row["version"]),
        "spaces": ["drive"],
        "ownedByMe": True,
        "webViewLink": f"{base_url}drive/folders/{row['id']}" if folder
        else f"{base_url}file/d/{row['id']}/view",
    }
    if row["modifier"]:  # the user who made the latest change (users.py), JSON
        resource["lastModifyingUser"] = json.loads(row["modifier"])
    if props["app"]:
        resource["appProperties"] = props["app"]
    if props["public"]:
        resource["properties"] = props["public"]
    if row["description"] is not None:
        resource["description"] = row["description"]
    if not mime.startswith(GOOGLE_APPS_PREFIX):
        resource.update(
            size=str(row["size"]), md5Checksum=row["md5"], headRevisionId=row["head_revision_id"]
        )
    return resource
