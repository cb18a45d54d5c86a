"""File contents going out: a download (alt=media, with byte ranges) and an export of a
Google Doc or Sheet."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from . import convert
from .errors import ApiError
from .records import GOOGLE_APPS_PREFIX


class MediaRoutes:
    """Mixed into server.Handler: downloads and exports."""

    def _download(self, file_id: str) -> None:
        self._drain()
        row, blob = self.store.content(file_id)
        if row["mime_type"].startswith(GOOGLE_APPS_PREFIX):
            raise ApiError(403, "fileNotDownloadable",
                           "Only files with binary content can be downloaded. Use Export with "
                           "Docs Editors files.", location="alt")
        size = row["size"] or 0
        start, end = 0, size - 1
        status, headers = 200, {"Content-Type": row["mime_type"]}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and size > 0 and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            self.send_header(name, value)
        self.end_headers()
        if blob is not None and length:
            for data in iter_file(blob, start, length):
                self.wfile.write(data)

    def export_file(self, params: dict, file_id: str) -> None:
        self._drain()
        mime = params.get("mimeType")
        if not mime:
            raise ApiError(400, "required", "Required parameter: mimeType", location="mimeType")
        row, blob = self.store.content(file_id)
        if row["mime_type"] == convert.SPREADSHEET_MIME:
            if mime != convert.EXPORT_CSV:
                raise ApiError(400, "badRequest", "The local Drive server exports Google Sheets "
                               "as text/csv only.", location="convertTo")
            text = blob.read_text(encoding="utf-8") if blob else ""
            self._send_bytes(200, text.encode("utf-8"), mime)
            return
        if row["mime_type"] != convert.DOCUMENT_MIME:
            raise ApiError(403, "fileNotExportable", "Export only supports Docs Editors files.")
        if mime not in convert.EXPORTABLE:
            raise ApiError(400, "badRequest",
                           "The requested conversion is not supported (the local Drive server "
                           f"exports {', '.join(convert.EXPORTABLE)}).", location="convertTo")
        text = blob.read_text(encoding="utf-8") if blob else ""
        if mime == convert.EXPORT_TEXT:
            data = convert.export_text(text)
        elif mime == convert.EXPORT_MARKDOWN:
            data = text.encode("utf-8")
        else:
            data = convert.export_pdf(text)
        self._send_bytes(200, data, mime)


def iter_file(path: Path, start: int, length: int, chunk: int = 1 << 16) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        while length > 0:
            data = handle.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
