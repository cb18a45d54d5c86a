"""Uploads in progress: resumable upload sessions (kept in the database, their bytes in
uploads/ under the state dir, expired after a week as on Drive) and request bodies on their way
to becoming blobs."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from .errors import ApiError
from .persistence import Persistence
from .validation import check_body, clean_props

SESSION_LIFETIME_MS = 7 * 24 * 3600 * 1000  # resumable sessions expire after a week, as on Drive


class UploadSessions(Persistence):
    """Resumable upload sessions and temporary bodies, on top of the state dir's database."""

    def open_session(
        self, target_id: str | None, meta: dict, params: dict, content_type: str, total: int | None
    ) -> str:
        check_body(meta, creating=target_id is None)
        clean_props(meta.get("appProperties"), "appProperties", allow_null=True)
        clean_props(meta.get("properties"), "properties", allow_null=True)
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
