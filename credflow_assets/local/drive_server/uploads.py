"""File contents coming in: `uploadType=media` and `multipart` uploads, creating a file or
replacing its content. Resumable uploads start here and continue in resumable.py."""

from __future__ import annotations

import hashlib
import json
import re

from .errors import ApiError, bad_request
from .files import id_list
from .records import Media


class UploadRoutes:
    """Mixed into server.Handler: POST and PATCH under /upload/drive/v3/files."""

    def upload_create(self, params: dict) -> None:
        self._upload(params, None)

    def upload_update(self, params: dict, file_id: str) -> None:
        self._upload(params, file_id)

    def _upload(self, params: dict, file_id: str | None) -> None:
        upload_type = params.get("uploadType")
        if upload_type == "resumable":
            self._open_session(params, file_id)
            return
        if upload_type == "media":
            meta, media = {}, self._body_to_media(self._content_type())
        elif upload_type == "multipart":
            meta, media = self._multipart()
        else:
            raise bad_request("uploadType must be media, multipart or resumable.",
                              location="uploadType")
        self._save(params, file_id, meta, media)

    def _save(self, params: dict, file_id: str | None, meta: dict, media: Media) -> None:
        try:
            if file_id is None:
                resource = self.store.create(meta, media, self._base_url(), self._user)
            else:
                add = id_list(params.get("addParents"))
                remove = id_list(params.get("removeParents"))
                resource = self.store.update(file_id, meta, add, remove, media, self._base_url(),
                                             self._user)
        finally:
            media.path.unlink(missing_ok=True)
        self._send_file(resource, params)

    def _multipart(self) -> tuple[dict, Media]:
        match = re.search(r'boundary="?([^";]+)"?', self._content_type())
        if not self._content_type().startswith("multipart/related") or not match:
            self._drain()
            raise bad_request("A multipart upload needs Content-Type multipart/related with a "
                              "boundary.")
        parts = _split_multipart(self._body(), match.group(1).encode())
        if len(parts) != 2:
            raise bad_request("A multipart upload has exactly two parts: metadata and media.")
        (_, meta_raw), (media_headers, data) = parts
        try:
            meta = json.loads(meta_raw or b"{}")
        except ValueError:
            raise ApiError(400, "parseError", "Parse Error in the metadata part.") from None
        path = self.store.temp_path()
        path.write_bytes(data)
        content_type = media_headers.get("content-type", "application/octet-stream")
        return meta, Media(path, content_type, len(data), hashlib.md5(data).hexdigest())


def _split_multipart(body: bytes, boundary: bytes) -> list[tuple[dict, bytes]]:
    """Parts of a multipart/related body as (lower-cased headers, payload).

    The line break before each delimiter belongs to the delimiter. Clients differ (RFC 2046
    says CRLF; googleapiclient's generator writes LF), so the style is read from the first
    delimiter line and stripped exactly: a payload ending in CR keeps it.
    """
    delimiter = b"--" + boundary
    chunks = body.split(delimiter)[1:]
    newline = b"\r\n" if chunks and chunks[0].startswith(b"\r\n") else b"\n"
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(newline)
        head_end = chunk.find(newline * 2)
        if head_end < 0:
            raise bad_request("Malformed multipart body: a part has no header block.")
        head, payload = chunk[:head_end], chunk[head_end + 2 * len(newline):]
        payload = payload.removesuffix(newline)
        headers: dict[str, str] = {}
        name = ""
        for line in head.decode("latin-1").splitlines():
            if line[:1] in (" ", "\t") and name:
                # A folded header (RFC 5322): googleapiclient's email generator folds long
                # values such as the .docx MIME type onto a continuation line.
                headers[name] = (headers[name] + " " + line.strip()).strip()
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = value.strip()
        parts.append((headers, payload))
    return parts
