"""Drive's operations on its state: read, list, create, update, move, trash and delete files,
and keep the service-account keys sign-in checks.

The database, blobs and clock are persistence.py's; resumable upload sessions are sessions.py's;
what a client may write is checked by validation.py; resources are built by records.py.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from .changes import ChangeLog
from .errors import ApiError, bad_request
from .query import FOLDER_MIME
from .records import GOOGLE_APPS_PREFIX, ID_PATTERN, Media, new_id
from .sessions import UploadSessions
from .validation import (
    cannot_add_parent,
    check_body,
    clean_props,
    prepare_content,
    time_field,
)


class Store(UploadSessions, ChangeLog):
    """Drive state under one state dir (see persistence.py); safe to share between threads."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self._expire_sessions()

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

    # -- writes ---------------------------------------------------------------------------------

    def create(self, meta: dict, media: Media | None, base_url: str,
               user: dict | None = None) -> dict:
        check_body(meta, creating=True)
        mime = meta.get("mimeType") or (media.content_type if media else None)
        mime = mime or "application/octet-stream"
        name = meta.get("name") or "Untitled"
        app_props = clean_props(meta.get("appProperties"), "appProperties")
        public_props = clean_props(meta.get("properties"), "properties")
        content = prepare_content(mime, media)
        with self._tx() as db:
            file_id = meta.get("id") or new_id()
            if meta.get("id"):
                if not ID_PATTERN.match(file_id):
                    raise bad_request("The provided file ID is not usable.", "invalid", "id")
                if db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone():
                    raise ApiError(409, "duplicate", "A file already exists with the provided ID.")
            parents = [self.resolve(p) for p in (meta.get("parents") or [self.root_id])]
            if len(parents) > 1:
                raise cannot_add_parent()
            for parent in parents:
                self._check_folder(parent)
            now = self._tick()
            created = time_field(meta, "createdTime", now)
            modified = time_field(meta, "modifiedTime", now)
            db.execute(
                "INSERT INTO files (id, name, mime_type, created_ms, modified_ms, trashed,"
                " explicitly_trashed, version, head_revision_id, size, md5, blob, description,"
                " modifier) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
                (
                    file_id, name, mime, created, modified, int(bool(meta.get("trashed"))),
                    int(bool(meta.get("trashed"))), *self._store_content(mime, content),
                    meta.get("description"), _modifier(user),
                ),
            )
            db.executemany("INSERT INTO parents VALUES (?, ?)", [(p, file_id) for p in parents])
            self._write_props(file_id, "app", app_props)
            self._write_props(file_id, "public", public_props)
            self._record_changes([file_id], now)
            return self._resources([self._row(file_id)], base_url)[0]

    def update(
        self,
        file_id: str,
        meta: dict,
        add_parents: list[str],
        remove_parents: list[str],
        media: Media | None,
        base_url: str,
        user: dict | None = None,
    ) -> dict:
        check_body(meta, creating=False)
        app_props = clean_props(meta.get("appProperties"), "appProperties", allow_null=True)
        public_props = clean_props(meta.get("properties"), "properties", allow_null=True)
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
            sets: dict[str, Any] = {"mime_type": mime, "modifier": _modifier(user)}
            if "name" in meta:
                sets["name"] = meta["name"] or "Untitled"
            if "description" in meta:
                sets["description"] = meta["description"]
            old_blob = row["blob"]
            if media is not None:
                content = prepare_content(mime, media)
                revision, size, md5, blob = self._store_content(mime, content)
                sets.update(head_revision_id=revision, size=size, md5=md5, blob=blob)
            self._move(row, add_parents, remove_parents)
            self._write_props(file_id, "app", app_props)
            self._write_props(file_id, "public", public_props)
            changed = [file_id]
            if "trashed" in meta and bool(meta["trashed"]) != bool(row["explicitly_trashed"]):
                changed += self._set_trashed(row, bool(meta["trashed"]))
            now = self._tick()
            self._record_changes(changed, now)
            sets["modified_ms"] = time_field(meta, "modifiedTime", now)
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
            self._record_changes(ids, self._tick(), removed=True)
        for blob in blobs:
            (self.blob_dir / blob).unlink(missing_ok=True)

    def reset(self) -> None:
        """Forget everything (tests); the root folder keeps its id."""
        with self._tx() as db:
            for table in ("files", "parents", "props", "uploads", "changes"):
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

    # -- the folder tree (inside transactions) -------------------------------------------------

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
            raise cannot_add_parent()
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

    def _set_trashed(self, row: sqlite3.Row, trashed: bool) -> list[str]:
        """Trash or restore a file; a folder's descendants follow implicitly, as on Drive.
        Returns the descendants that followed (each has a change of its own)."""
        self._db.execute(
            "UPDATE files SET trashed = ?, explicitly_trashed = ? WHERE id = ?",
            (int(trashed), int(trashed), row["id"]),
        )
        if row["mime_type"] != FOLDER_MIME:
            return []
        descendants = self._descendants(row["id"])
        for chunk in (descendants[i : i + 500] for i in range(0, len(descendants), 500)):
            marks = ",".join("?" * len(chunk))
            self._db.execute(
                f"UPDATE files SET trashed = ? WHERE explicitly_trashed = 0 AND id IN ({marks})",
                [int(trashed), *chunk],
            )
        return descendants


def _modifier(user: dict | None) -> str | None:
    """The stored `lastModifyingUser` of a change (users.py), without `me` (set per answer)."""
    return None if user is None else json.dumps({k: v for k, v in user.items() if k != "me"})
