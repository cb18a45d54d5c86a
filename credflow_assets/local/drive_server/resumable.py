"""Resumable uploads: a session opened by `uploadType=resumable`, then PUT chunks (308 and
Range until the last one), the finished file saved as any upload is."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlencode

from .errors import bad_request
from .records import Media

CHUNK_GRANULARITY = 256 * 1024  # non-final resumable chunks must be multiples of this


class ResumableUploads:
    """Mixed into server.Handler: resumable upload sessions."""

    def _open_session(self, params: dict, file_id: str | None) -> None:
        meta = self._json_body()
        content_type = (
            self.headers.get("X-Upload-Content-Type") or meta.get("mimeType")
            or "application/octet-stream"
        )
        total_header = self.headers.get("X-Upload-Content-Length")
        total = int(total_header) if total_header and total_header.isdigit() else None
        session_id = self.store.open_session(file_id, meta, params, content_type, total)
        path = "upload/drive/v3/files" + (f"/{file_id}" if file_id else "")
        query = urlencode({**params, "upload_id": session_id})
        self.send_response(200)
        self.send_header("Location", f"{self._base_url()}{path}?{query}")
        self.send_header("X-GUploader-UploadID", session_id)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def upload_chunk(self, params: dict, file_id: str | None = None) -> None:
        session_id = params.get("upload_id")
        if not session_id:
            raise bad_request("Missing upload_id.", location="upload_id")
        with self.server.session_lock(session_id):
            self._upload_chunk(session_id)

    def _upload_chunk(self, session_id: str) -> None:
        session = self.store.session(session_id)
        received, total, length = session["received"], session["total"], self._remaining
        content_range = self.headers.get("Content-Range", "").strip()
        query = re.fullmatch(r"bytes \*/(\d+|\*)", content_range)
        span = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
        if query:
            self._drain()
            total = int(query.group(1)) if query.group(1) != "*" else total
            start, end = received, received - 1
        elif span:
            start, end = int(span.group(1)), int(span.group(2))
            total = int(span.group(3)) if span.group(3) != "*" else total
            if end - start + 1 != length or (total is not None and end >= total):
                self._drain()
                raise bad_request(f"Content-Range {content_range!r} does not match the "
                                  f"{length} bytes sent.")
        elif content_range:
            self._drain()
            raise bad_request(f"Invalid Content-Range {content_range!r}.")
        else:
            start, end, total = received, received + length - 1, received + length
        if start > received:
            self._drain()
            raise bad_request(f"Invalid request: the upload offset is {start} but the server "
                              f"has {received} bytes.")
        final = total is not None and end + 1 >= total
        if not query and not final and length % CHUNK_GRANULARITY:
            self._drain()
            raise bad_request(
                "Invalid request. The number of bytes uploaded is required to be equal or greater "
                f"than {CHUNK_GRANULARITY}, except for the final request (it's recommended to be "
                f"the exact multiple of {CHUNK_GRANULARITY}). The received request contained "
                f"{length} bytes, which does not meet this requirement."
            )
        if not query:
            self._discard(received - start)
            with open(self.store.session_path(session_id), "ab") as part:
                self._copy_body(part)
            received = max(received, end + 1)
        self.store.set_session_progress(session_id, received, total)
        if total is not None and received >= total:
            self._finish_session(session)
            return
        self.send_response(308)
        if received:
            self.send_header("Range", f"bytes=0-{received - 1}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _finish_session(self, session: dict) -> None:
        part = self.store.session_path(session["id"])
        temp = self.store.temp_path()
        part.rename(temp)
        digest, size = hashlib.md5(), 0
        with open(temp, "rb") as handle:
            while data := handle.read(1 << 20):
                digest.update(data)
                size += len(data)
        self.store.close_session(session["id"])
        media = Media(temp, session["content_type"], size, digest.hexdigest())
        self._save(session["params"], session["target_id"], session["metadata"], media)
