"""Drive state: metadata in SQLite, file contents as blobs on disk, both under the state dir.

Everything persists across restarts: files, parents, properties, resumable upload sessions and
the clock that keeps modification times strictly increasing. One connection serves all
threads behind one lock; writes are short and blobs are streamed outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import convert
from .query import FILE_FIELDS, FOLDER_MIME, name_contains, parse_time_ms

GOOGLE_APPS_PREFIX = "application/vnd.google-apps."
PROPERTY_LIMIT_BYTES = 124
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SESSION_LIFETIME_MS = 7 * 24 * 3600 * 1000  # resumable sessions expire after a week, as on Drive
_WRITABLE = {
    "id", "name", "mimeType", "parents", "appProperties", "properties", "trashed",
    "createdTime", "modifiedTime", "description", "starred", "kind",
}
# Writable on Drive, but not kept by this server: refused rather than silently dropped.
_WRITABLE_ON_DRIVE_ONLY = {
    "contentHints", "contentRestrictions", "copyRequiresWriterPermission",
    "downloadRestrictions", "folderColorRgb", "inheritedPermissionsDisabled",
    "originalFilename", "shortcutDetails", "viewedByMeTime", "writersCanShare",
    "viewersCanCopyContent",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL,
    trashed INTEGER NOT NULL DEFAULT 0,
    explicitly_trashed INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL,
    head_revision_id TEXT,
    size INTEGER,
    md5 TEXT,
    blob TEXT,
    description TEXT
);
CREATE INDEX IF NOT EXISTS files_created ON files (created_ms);
CREATE TABLE IF NOT EXISTS parents (
    parent_id TEXT NOT NULL, file_id TEXT NOT NULL, PRIMARY KEY (parent_id, file_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parents_by_file ON parents (file_id);
CREATE TABLE IF NOT EXISTS props (
    file_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (file_id, kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS props_by_value ON props (kind, key, value);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    target_id TEXT,
    metadata TEXT NOT NULL,
    params TEXT NOT NULL,
    content_type TEXT NOT NULL,
    total INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
-- Public halves of service-account keys (oauth.py checks sign-in JWTs against them); the
-- private halves stay in the key files. Config, not content: /_admin/reset keeps them.
CREATE TABLE IF NOT EXISTS service_account_keys (
    key_id TEXT PRIMARY KEY,
    client_email TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"""


class ApiError(Exception):
    """An error answered in Drive's JSON shape."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        location: str | None = None,
        location_type: str = "parameter",
        domain: str = "global",
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.location, self.location_type, self.domain = location, location_type, domain

    def body(self) -> dict:
        detail = {"domain": self.domain, "reason": self.reason, "message": self.message}
        if self.location:
            detail.update(location=self.location, locationType=self.location_type)
        return {"error": {"code": self.status, "message": self.message, "errors": [detail]}}


def not_found(file_id: str) -> ApiError:
    return ApiError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def bad_request(message: str, reason: str = "badRequest", location: str | None = None) -> ApiError:
    return ApiError(400, reason, message, location=location)


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


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        self.upload_dir = self.state_dir / "uploads"
        for directory in (self.blob_dir, self.upload_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.state_dir / "drive.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.create_function("drive_name_contains", 2, name_contains, deterministic=True)
        self._db.executescript(_SCHEMA)
        with self._tx():
            self.root_id = self._meta("root_id") or self._set_meta("root_id", new_id())
            self._last_ms = int(self._meta("last_ms") or 0)
        self._expire_sessions()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return value

    def _tick(self) -> int:
        """Now in ms, strictly after every earlier tick (inside a transaction)."""
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._set_meta("last_ms", str(self._last_ms))
        return self._last_ms

    def resolve(self, file_id: str) -> str:
        return self.root_id if file_id == "root" else file_id

    # -- reads ----------------------------------------------------------------------------------

    def get(self, file_id: str, base_url: str) -> dict:
        file_id = self.resolve(file_id)
        if file_id == self.root_id:
            return self._root_resource(base_url)
        with self._lock:
            row = self._row(file_id)
            return self._resources([row], base_url)[0]

    def content(self, file_id: str) -> tuple[dict, Path | None]:
        """(row as dict, blob path) for downloads and exports."""
        with self._lock:
            row = dict(self._row(self.resolve(file_id)))
        return row, (self.blob_dir / row["blob"]) if row["blob"] else None

    def list(
        self, where: str, params: list, order: str, offset: int, limit: int, base_url: str
    ) -> tuple[list[dict], bool]:
        sql = f"SELECT f.* FROM files f WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(sql, [*params, limit + 1, offset]).fetchall()
            return self._resources(rows[:limit], base_url), len(rows) > limit

    def children(self, folder_id: str, limit: int) -> tuple[list[dict], int]:
        """Up to `limit` children of a folder, folders first, then by name (the web pages'
        order), trashed ones included; and how many there are in all."""
        folder_id = self.resolve(folder_id)
        with self._lock:
            total = self._db.execute(
                "SELECT count(*) FROM parents WHERE parent_id = ?", (folder_id,)
            ).fetchone()[0]
            rows = self._db.execute(
                "SELECT f.* FROM files f JOIN parents p ON p.file_id = f.id WHERE p.parent_id = ?"
                " ORDER BY f.mime_type = ? DESC, lower(f.name), f.name, f.created_ms LIMIT ?",
                (folder_id, FOLDER_MIME, limit),
            ).fetchall()
            return self._resources(rows, ""), total

    def query_plan(self, where: str, params: list) -> str:
        """EXPLAIN QUERY PLAN of a list query (lets tests check index use)."""
        sql = f"EXPLAIN QUERY PLAN SELECT f.* FROM files f WHERE {where}"
        with self._lock:
            return "\n".join(row["detail"] for row in self._db.execute(sql, params))

    def _row(self, file_id: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise not_found(file_id)
        return row

    def _resources(self, rows: list[sqlite3.Row], base_url: str) -> list[dict]:
        ids = [row["id"] for row in rows]
        parents: dict[str, list[str]] = {i: [] for i in ids}
        props: dict[str, dict[str, dict]] = {i: {"app": {}, "public": {}} for i in ids}
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            marks = ",".join("?" * len(chunk))
            for p in self._db.execute(
                f"SELECT file_id, parent_id FROM parents WHERE file_id IN ({marks})", chunk
            ):
                parents[p[0]].append(p[1])
            for p in self._db.execute(
                f"SELECT file_id, kind, key, value FROM props WHERE file_id IN ({marks})", chunk
            ):
                props[p[0]][p[1]][p[2]] = p[3]
        return [
            _resource(row, parents[row["id"]], props[row["id"]], base_url) for row in rows
        ]

    def _root_resource(self, base_url: str) -> dict:
        return {
            "kind": "drive#file", "id": self.root_id, "name": "My Drive",
            "mimeType": FOLDER_MIME, "parents": [], "trashed": False,
            "webViewLink": f"{base_url}drive/folders/{self.root_id}",
        }

    # -- writes ---------------------------------------------------------------------------------

    def create(self, meta: dict, media: Media | None, base_url: str) -> dict:
        _check_body(meta, creating=True)
        mime = meta.get("mimeType") or (media.content_type if media else None)
        mime = mime or "application/octet-stream"
        name = meta.get("name") or "Untitled"
        app_props = _clean_props(meta.get("appProperties"), "appProperties")
        public_props = _clean_props(meta.get("properties"), "properties")
        content = _prepare_content(mime, media)
        with self._tx() as db:
            file_id = meta.get("id") or new_id()
            if meta.get("id"):
                if not _ID_PATTERN.match(file_id):
                    raise bad_request("The provided file ID is not usable.", "invalid", "id")
                if db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone():
                    raise ApiError(409, "duplicate", "A file already exists with the provided ID.")
            parents = [self.resolve(p) for p in (meta.get("parents") or [self.root_id])]
            if len(parents) > 1:
                raise _cannot_add_parent()
            for parent in parents:
                self._check_folder(parent)
            now = self._tick()
            created = _time_field(meta, "createdTime", now)
            modified = _time_field(meta, "modifiedTime", now)
            db.execute(
                "INSERT INTO files (id, name, mime_type, created_ms, modified_ms, trashed,"
                " explicitly_trashed, version, head_revision_id, size, md5, blob, description)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    file_id, name, mime, created, modified, int(bool(meta.get("trashed"))),
                    int(bool(meta.get("trashed"))), *self._store_content(mime, content),
                    meta.get("description"),
                ),
            )
            db.executemany("INSERT INTO parents VALUES (?, ?)", [(p, file_id) for p in parents])
            self._write_props(file_id, "app", app_props)
            self._write_props(file_id, "public", public_props)
            return self._resources([self._row(file_id)], base_url)[0]

    def update(
        self,
        file_id: str,
        meta: dict,
        add_parents: list[str],
        remove_parents: list[str],
        media: Media | None,
        base_url: str,
    ) -> dict:
        _check_body(meta, creating=False)
        app_props = _clean_props(meta.get("appProperties"), "appProperties", allow_null=True)
        public_props = _clean_props(meta.get("properties"), "properties", allow_null=True)
        with self._tx() as db:
            row = self._row(self.resolve(file_id))
            file_id, mime = row["id"], row["mime_type"]
            if "mimeType" in meta and meta["mimeType"] != mime:
                if mime.startswith(GOOGLE_APPS_PREFIX) or meta["mimeType"].startswith(
                    GOOGLE_APPS_PREFIX
                ):
                    raise bad_request(
                        "Changing the mimeType to or from a Google type is not supported by the"
                        " local Drive server.", location="mimeType",
                    )
                mime = meta["mimeType"]
            sets: dict[str, Any] = {"mime_type": mime}
            if "name" in meta:
                sets["name"] = meta["name"] or "Untitled"
            if "description" in meta:
                sets["description"] = meta["description"]
            old_blob = row["blob"]
            if media is not None:
                content = _prepare_content(mime, media)
                revision, size, md5, blob = self._store_content(mime, content)
                sets.update(head_revision_id=revision, size=size, md5=md5, blob=blob)
            self._move(row, add_parents, remove_parents)
            self._write_props(file_id, "app", app_props)
            self._write_props(file_id, "public", public_props)
            if "trashed" in meta and bool(meta["trashed"]) != bool(row["explicitly_trashed"]):
                self._set_trashed(row, bool(meta["trashed"]))
            now = self._tick()
            sets["modified_ms"] = _time_field(meta, "modifiedTime", now)
            assignments = ", ".join(f"{column} = ?" for column in sets)
            db.execute(
                f"UPDATE files SET {assignments}, version = version + 1 WHERE id = ?",
                [*sets.values(), file_id],
            )
            result = self._resources([self._row(file_id)], base_url)[0]
        if media is not None and old_blob:
            (self.blob_dir / old_blob).unlink(missing_ok=True)
        return result

    def delete(self, file_id: str) -> None:
        """Delete a file for good; a folder takes its descendants with it, as on Drive."""
        with self._tx() as db:
            row = self._row(self.resolve(file_id))
            ids = [row["id"], *self._descendants(row["id"])]
            blobs = []
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                marks = ",".join("?" * len(chunk))
                blobs += [
                    r[0]
                    for r in db.execute(f"SELECT blob FROM files WHERE id IN ({marks})", chunk)
                    if r[0]
                ]
                db.execute(f"DELETE FROM files WHERE id IN ({marks})", chunk)
                db.execute(f"DELETE FROM parents WHERE file_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM parents WHERE parent_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM props WHERE file_id IN ({marks})", chunk)
        for blob in blobs:
            (self.blob_dir / blob).unlink(missing_ok=True)

    def reset(self) -> None:
        """Forget everything (tests); the root folder keeps its id."""
        with self._tx() as db:
            for table in ("files", "parents", "props", "uploads"):
                db.execute(f"DELETE FROM {table}")
            for directory in (self.blob_dir, self.upload_dir):
                shutil.rmtree(directory, ignore_errors=True)
                directory.mkdir(parents=True)

    # -- service-account keys -----------------------------------------------------------------

    def add_service_account_key(self, key_id: str, client_email: str, public_key_pem: str) -> None:
        """Register (or replace) the public half of a service-account key."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO service_account_keys VALUES (?, ?, ?, ?)",
                (key_id, client_email, public_key_pem, self._tick()),
            )

    def service_account_keys(self, client_email: str | None = None) -> list[dict]:
        """Registered keys ({key_id, client_email, public_key_pem}), of one account or all."""
        sql = "SELECT key_id, client_email, public_key_pem FROM service_account_keys"
        args: tuple = ()
        if client_email is not None:
            sql, args = sql + " WHERE client_email = ?", (client_email,)
        with self._lock:
            return [dict(row) for row in self._db.execute(sql + " ORDER BY created_ms", args)]

    # -- resumable upload sessions ------------------------------------------------------------

    def open_session(
        self, target_id: str | None, meta: dict, params: dict, content_type: str, total: int | None
    ) -> str:
        _check_body(meta, creating=target_id is None)
        _clean_props(meta.get("appProperties"), "appProperties", allow_null=True)
        _clean_props(meta.get("properties"), "properties", allow_null=True)
        with self._tx() as db:
            if target_id is not None:
                target_id = self._row(self.resolve(target_id))["id"]
            for parent in meta.get("parents") or []:
                self._check_folder(self.resolve(parent))
            session_id = secrets.token_urlsafe(24)
            db.execute(
                "INSERT INTO uploads (id, target_id, metadata, params, content_type, total,"
                " received, created_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (session_id, target_id, json.dumps(meta), json.dumps(params), content_type,
                 total, self._tick()),
            )
        self.session_path(session_id).touch()
        return session_id

    def session(self, session_id: str) -> dict:
        with self._lock:
            row = self._db.execute("SELECT * FROM uploads WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise ApiError(404, "notFound", "Upload session not found or expired.",
                           location="upload_id")
        session = dict(row)
        session["metadata"] = json.loads(session["metadata"])
        session["params"] = json.loads(session["params"])
        return session

    def _expire_sessions(self) -> None:
        cutoff = int(time.time() * 1000) - SESSION_LIFETIME_MS
        with self._tx() as db:
            expired = [r[0] for r in db.execute(
                "SELECT id FROM uploads WHERE created_ms < ?", (cutoff,))]
            db.execute("DELETE FROM uploads WHERE created_ms < ?", (cutoff,))
        for session_id in expired:
            self.session_path(session_id).unlink(missing_ok=True)
        for stray in self.upload_dir.glob("tmp-*"):  # bodies of requests cut short
            stray.unlink(missing_ok=True)

    def session_path(self, session_id: str) -> Path:
        return self.upload_dir / f"{session_id}.part"

    def set_session_progress(self, session_id: str, received: int, total: int | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE uploads SET received = ?, total = ? WHERE id = ?",
                (received, total, session_id),
            )

    def close_session(self, session_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (session_id,))
        self.session_path(session_id).unlink(missing_ok=True)

    def temp_path(self) -> Path:
        return self.upload_dir / f"tmp-{secrets.token_hex(8)}"

    # -- helpers inside transactions ----------------------------------------------------------

    def _check_folder(self, folder_id: str) -> None:
        if folder_id == self.root_id:
            return
        row = self._row(folder_id)
        if row["mime_type"] != FOLDER_MIME:
            raise bad_request(f"The parent {folder_id} is not a folder.", location="parents")

    def _descendants(self, folder_id: str) -> list[str]:
        rows = self._db.execute(
            "WITH RECURSIVE tree(id) AS (SELECT file_id FROM parents WHERE parent_id = ?"
            " UNION SELECT p.file_id FROM parents p JOIN tree t ON p.parent_id = t.id)"
            " SELECT id FROM tree",
            (folder_id,),
        )
        return [r[0] for r in rows]

    def _move(self, row: sqlite3.Row, add: list[str], remove: list[str]) -> None:
        file_id = row["id"]
        current = [
            r[0] for r in self._db.execute("SELECT parent_id FROM parents WHERE file_id = ?",
                                           (file_id,))
        ]
        remove = [self.resolve(p) for p in remove]
        add = [self.resolve(p) for p in add]
        remaining = [p for p in current if p not in remove]
        for parent in add:
            if parent in remaining:
                raise bad_request(f"The file already has the parent {parent}.",
                                  location="addParents")
        if len(remaining) + len(add) > max(1, len(remaining)):
            raise _cannot_add_parent()
        for parent in add:
            self._check_folder(parent)
            if row["mime_type"] == FOLDER_MIME and (
                parent == file_id or parent in self._descendants(file_id)
            ):
                raise bad_request("Adding this parent would create a cycle in the folder tree.",
                                  location="addParents")
        self._db.executemany(
            "DELETE FROM parents WHERE parent_id = ? AND file_id = ?",
            [(p, file_id) for p in remove],
        )
        self._db.executemany("INSERT INTO parents VALUES (?, ?)", [(p, file_id) for p in add])

    def _set_trashed(self, row: sqlite3.Row, trashed: bool) -> None:
        """Trash or restore a file; a folder's descendants follow implicitly, as on Drive."""
        self._db.execute(
            "UPDATE files SET trashed = ?, explicitly_trashed = ? WHERE id = ?",
            (int(trashed), int(trashed), row["id"]),
        )
        if row["mime_type"] != FOLDER_MIME:
            return
        descendants = self._descendants(row["id"])
        for chunk in (descendants[i : i + 500] for i in range(0, len(descendants), 500)):
            marks = ",".join("?" * len(chunk))
            self._db.execute(
                f"UPDATE files SET trashed = ? WHERE explicitly_trashed = 0 AND id IN ({marks})",
                [int(trashed), *chunk],
            )

    def _write_props(self, file_id: str, kind: str, props: dict[str, str | None]) -> None:
        for key, value in props.items():
            if value is None:
                self._db.execute(
                    "DELETE FROM props WHERE file_id = ? AND kind = ? AND key = ?",
                    (file_id, kind, key),
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO props VALUES (?, ?, ?, ?)", (file_id, kind, key, value)
                )

    def _store_content(self, mime: str, content: Media | str | None) -> tuple:
        """(head_revision_id, size, md5, blob) for new content, moving it into blobs/."""
        if mime.startswith(GOOGLE_APPS_PREFIX):
            if content is None:
                return None, None, None, None
            blob = f"{secrets.token_hex(16)}.txt"
            (self.blob_dir / blob).write_text(content, encoding="utf-8")
            return None, None, None, blob
        revision = "0B" + secrets.token_urlsafe(24)
        if content is None:
            return revision, 0, hashlib.md5(b"").hexdigest(), None
        blob = secrets.token_hex(16)
        os.replace(content.path, self.blob_dir / blob)
        return revision, content.size, content.md5, blob


# ---------------------------------------------------------------------------------------------
# validation and resource building


def _check_body(meta: dict, *, creating: bool) -> None:
    if not isinstance(meta, dict):
        raise bad_request("The request body must be a JSON object (a File resource).")
    fields = set(meta) - _WRITABLE
    if fields - FILE_FIELDS:
        names = ", ".join(sorted(fields - FILE_FIELDS))
        raise bad_request(f"Invalid JSON payload received. Unknown name: {names}.", "invalid")
    if fields & _WRITABLE_ON_DRIVE_ONLY:
        names = ", ".join(sorted(fields & _WRITABLE_ON_DRIVE_ONLY))
        raise bad_request(f"The local Drive server does not support setting {names}.")
    if fields:
        raise ApiError(403, "fieldNotWritable",
                       "The resource body includes fields which are not directly writable: "
                       + ", ".join(sorted(fields)) + ".")
    if not creating and "parents" in meta:
        raise ApiError(403, "fieldNotWritable",
                       "The parents field is not directly writable in update requests. Use the "
                       "addParents and removeParents parameters instead.")
    if not creating and "id" in meta:
        raise ApiError(403, "fieldNotWritable", "The id field is not directly writable.")
    if "name" in meta and not isinstance(meta["name"], str):
        raise bad_request("name must be a string.", location="name")
    if "parents" in meta and not (
        isinstance(meta["parents"], list) and all(isinstance(p, str) for p in meta["parents"])
    ):
        raise bad_request("parents must be a list of folder ids.", location="parents")


def _clean_props(
    props: Any, field: str, *, allow_null: bool = False
) -> dict[str, str | None]:
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise bad_request(f"{field} must be an object of string values.", location=field)
    cleaned: dict[str, str | None] = {}
    for key, value in props.items():
        if value is None:
            if allow_null:
                cleaned[key] = None
            continue
        if not isinstance(value, str):
            raise bad_request(f"{field} values must be strings ({key!r}).", location=field)
        if not key:
            raise bad_request(f"{field} keys must not be empty.", location=field)
        if len(key.encode("utf-8")) + len(value.encode("utf-8")) > PROPERTY_LIMIT_BYTES:
            raise ApiError(
                403, "propertyLengthLimitExceeded",
                "Properties and app properties are limited to 124 bytes in UTF-8 encoding, "
                "counting both the key and the value.",
            )
        cleaned[key] = value
    return cleaned


def _prepare_content(mime: str, media: Media | None) -> Media | str | None:
    """Binary media as is; for a Google Doc the imported text, for a Google Sheet the imported
    CSV; refuse other conversions."""
    if media is None or not mime.startswith(GOOGLE_APPS_PREFIX):
        return media
    source = media.content_type.split(";")[0].strip().lower()
    if mime == convert.SPREADSHEET_MIME and source in convert.IMPORTABLE_TO_SPREADSHEET:
        try:
            return media.path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        finally:
            media.path.unlink(missing_ok=True)
    if mime != convert.DOCUMENT_MIME or source not in convert.IMPORTABLE_TO_DOCUMENT:
        media.path.unlink(missing_ok=True)
        raise ApiError(
            400, "conversionUnsupportedConversionPath",
            "Conversion of the uploaded content to the requested output type is not supported.",
        )
    try:
        return convert.imported_text(media.path, source)
    finally:
        media.path.unlink(missing_ok=True)


def _time_field(meta: dict, field: str, default: int) -> int:
    if meta.get(field) is None:
        return default
    try:
        return parse_time_ms(str(meta[field]), field, field)
    except ValueError as error:
        raise bad_request(str(error), "invalid", field) from None


def _cannot_add_parent() -> ApiError:
    return ApiError(403, "cannotAddParent", "Increasing the number of parents is not allowed")


def _resource(row: sqlite3.Row, parents: list[str], props: dict, base_url: str) -> dict:
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


def iter_file(path: Path, start: int, length: int, chunk: int = 1 << 16) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        while length > 0:
            data = handle.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
