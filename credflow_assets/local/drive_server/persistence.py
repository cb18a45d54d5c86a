"""Where Drive state lives: metadata in SQLite, file contents as blobs on disk, both under the
state dir.

Everything persists across restarts: files, parents, properties, resumable upload sessions and
the clock that keeps modification times strictly increasing. One connection serves all
threads behind one lock; writes are short and blobs are streamed outside it. `Persistence`
holds the connection and the primitives the operations (store.py, sessions.py) are built on.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import bad_request, not_found
from .query import FOLDER_MIME, name_contains
from .records import GOOGLE_APPS_PREFIX, Media, file_resource, new_id

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
    description TEXT,
    modifier TEXT
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
-- Drive's change log (changes.py): the latest change of each file, numbered; a page token is
-- a change number, and AUTOINCREMENT never reuses one.
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id TEXT NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    removed INTEGER NOT NULL
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


class Persistence:
    """The state dir: its SQLite database (schema, transactions, clock) and its blobs."""

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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        if "modifier" not in columns:  # a state dir from before lastModifyingUser
            self._db.execute("ALTER TABLE files ADD COLUMN modifier TEXT")
        with self._tx():
            self.root_id = self._meta("root_id") or self._set_meta("root_id", new_id())
            self._last_ms = int(self._meta("last_ms") or 0)

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

    # -- rows and resources -------------------------------------------------------------------

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
            file_resource(row, parents[row["id"]], props[row["id"]], base_url) for row in rows
        ]

    def _root_resource(self, base_url: str) -> dict:
        return {
            "kind": "drive#file", "id": self.root_id, "name": "My Drive",
            "mimeType": FOLDER_MIME, "parents": [], "trashed": False,
            "webViewLink": f"{base_url}drive/folders/{self.root_id}",
        }

    # -- helpers inside transactions ----------------------------------------------------------

    def _check_folder(self, folder_id: str) -> None:
        if folder_id == self.root_id:
            return
        row = self._row(folder_id)
        if row["mime_type"] != FOLDER_MIME:
            raise bad_request(f"The parent {folder_id} is not a folder.", location="parents")

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
