"""The files routes on metadata: list (with q, orderBy, fields and paging), get, create,
update (with addParents/removeParents), delete and generateIds."""

from __future__ import annotations

import base64
import hashlib
import json

from .errors import ApiError
from .query import (
    FILE_FIELDS,
    FILE_LIST_FIELDS,
    apply_fields,
    compile_order_by,
    compile_q,
    parse_q,
)
from .records import new_id
from .users import as_seen_by
from .responses import DEFAULT_LIST_FIELDS


class FileRoutes:
    """Mixed into server.Handler: the files routes that read and write metadata."""

    def list_files(self, params: dict) -> None:
        page_size = _int_param(params, "pageSize", 100, 1, 1000)
        where, args = compile_q(parse_q(params.get("q")), root_id=self.store.root_id)
        order = compile_order_by(params.get("orderBy"))
        key = hashlib.sha256(f"{params.get('q')}|{params.get('orderBy')}".encode()).hexdigest()
        offset = _decode_page_token(params.get("pageToken"), key[:16])
        files, more = self.store.list(where, args, order, offset, page_size, self._base_url())
        files = [as_seen_by(file, self._user) for file in files]
        response = {"kind": "drive#fileList", "incompleteSearch": False, "files": files}
        if more:
            response["nextPageToken"] = _encode_page_token(offset + page_size, key[:16])
        tree = self._fields(params, FILE_LIST_FIELDS, {"files": FILE_FIELDS}, DEFAULT_LIST_FIELDS)
        self._send_json(200, apply_fields(response, tree))

    def get_file(self, params: dict, file_id: str) -> None:
        if params.get("alt") == "media":
            self._download(file_id)
            return
        self._send_file(self.store.get(file_id, self._base_url()), params)

    def create_file(self, params: dict) -> None:
        meta = self._json_body()
        self._send_file(self.store.create(meta, None, self._base_url(), self._user), params)

    def update_file(self, params: dict, file_id: str) -> None:
        meta = self._json_body()
        add, remove = id_list(params.get("addParents")), id_list(params.get("removeParents"))
        self._send_file(
            self.store.update(file_id, meta, add, remove, None, self._base_url(), self._user),
            params,
        )

    def delete_file(self, params: dict, file_id: str) -> None:
        self._drain()
        self.store.delete(file_id)
        self.send_response(204)
        self.end_headers()

    def generate_ids(self, params: dict) -> None:
        self._drain()
        count = _int_param(params, "count", 10, 1, 1000)
        self._send_json(200, {
            "kind": "drive#generatedIds", "space": params.get("space", "drive"),
            "ids": [new_id() for _ in range(count)],
        })


def _int_param(params: dict, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "invalid", f"Invalid value '{raw}'. Values must be within the range: "
                       f"[{low}, {high}]", location=name)
    return value


def id_list(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def _encode_page_token(offset: int, key: str) -> str:
    raw = json.dumps({"o": offset, "k": key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str | None, key: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["k"] == key and isinstance(data["o"], int) and data["o"] >= 0:
            return data["o"]
    except (ValueError, KeyError, TypeError):
        pass
    raise ApiError(400, "invalid", "Invalid Value: the pageToken does not belong to this query.",
                   location="pageToken")
