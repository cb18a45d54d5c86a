"""Request bodies: read within Content-Length, drained when unused, parsed as JSON, or
streamed to a temporary file as upload media."""

from __future__ import annotations

import hashlib
import json

from .errors import ApiError, bad_request
from .records import Media

MAX_IN_MEMORY_BODY = 64 * 1024 * 1024


class RequestBodies:
    """Mixed into server.Handler: reading the request body."""

    def _read(self, size: int) -> bytes:
        data = self.rfile.read(min(size, self._remaining))
        self._remaining -= len(data)
        return data

    def _drain(self) -> None:
        self._discard(self._remaining)

    def _discard(self, size: int) -> None:
        while size > 0 and self._remaining > 0:
            data = self._read(min(size, 1 << 20))
            if not data:
                break
            size -= len(data)

    def _copy_body(self, handle) -> tuple[int, str]:
        digest, size = hashlib.md5(), 0
        while self._remaining > 0:
            data = self._read(1 << 20)
            if not data:
                raise bad_request("The request body ended early.")
            handle.write(data)
            digest.update(data)
            size += len(data)
        return size, digest.hexdigest()

    def _body(self) -> bytes:
        if self._remaining > MAX_IN_MEMORY_BODY:
            self._drain()
            raise ApiError(413, "uploadTooLarge", "Use a resumable upload for bodies this large.")
        return self._read(self._remaining)

    def _json_body(self) -> dict:
        raw = self._body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "parseError", "Parse Error") from None
        if not isinstance(body, dict):
            raise ApiError(400, "parseError", "Parse Error: the body must be a JSON object.")
        return body

    def _content_type(self) -> str:
        return self.headers.get("Content-Type") or "application/octet-stream"

    def _body_to_media(self, content_type: str) -> Media:
        path = self.store.temp_path()
        try:
            with open(path, "wb") as handle:
                size, md5 = self._copy_body(handle)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Media(path, content_type, size, md5)
