"""Answers: JSON (with the `fields` selection applied), bytes, web pages, and errors in
Drive's shape; and the root URL as the client reached it."""

from __future__ import annotations

import json
import re

from . import pages
from .errors import ApiError
from .users import as_seen_by
from .query import FILE_FIELDS, apply_fields, parse_fields, validate_fields

_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
DEFAULT_FILE_FIELDS = {"kind": None, "id": None, "name": None, "mimeType": None}
DEFAULT_LIST_FIELDS = {
    "kind": None, "nextPageToken": None, "incompleteSearch": None, "files": DEFAULT_FILE_FIELDS,
}


class Responses:
    """Mixed into server.Handler: writing the response."""

    def _base_url(self) -> str:
        """The root URL as the client reached it (webViewLinks must open from where it is);
        a Host header that is not a plain host[:port] falls back to the listening address."""
        host = self.headers.get("Host") or ""
        if not _HOST.fullmatch(host):
            host = f"127.0.0.1:{self.server.server_address[1]}"
        return f"http://{host}/"

    def _fields(self, params: dict, allowed, nested, default) -> dict | None:
        if "fields" not in params:
            return default
        tree = parse_fields(params["fields"])
        validate_fields(tree, allowed, nested)
        return tree

    def _send_file(self, resource: dict, params: dict) -> None:
        tree = self._fields(params, FILE_FIELDS, None, DEFAULT_FILE_FIELDS)
        resource = as_seen_by(resource, getattr(self, "_user", None))
        self._send_json(200, apply_fields(resource, tree))

    def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, indent=1).encode("utf-8")
        self._send_bytes(status, data, "application/json; charset=UTF-8", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str,
                    headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_page(self, page: pages.Response) -> None:
        if page.stream is None:
            self._send_bytes(page.status, page.body, page.content_type, page.headers)
            return
        headers = {"Content-Type": page.content_type, **page.headers}
        # Opened before the headers go: a blob replaced by an update meanwhile stays readable.
        with open(page.stream, "rb") as handle:
            self.send_response(page.status)
            for name, value in {**headers, "Content-Length": str(page.stream_size)}.items():
                self.send_header(name, value)
            self.end_headers()
            remaining = page.stream_size
            while remaining > 0 and (data := handle.read(min(remaining, 1 << 16))):
                self.wfile.write(data)
                remaining -= len(data)

    def _send_error(self, error: ApiError) -> None:
        self._drain()
        headers = {"WWW-Authenticate": 'Bearer realm="credflow-local-drive"'} \
            if error.status == 401 else None
        self._send_json(error.status, error.body(), headers)
