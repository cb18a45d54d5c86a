"""Drive's changes feed: a change log in the store, and `changes.getStartPageToken` and
`changes.list` answered from it, with Drive's semantics.

Every write to a file records a change: a create, a new revision (media update), a rename or
any other metadata update, a move (addParents/removeParents), a trash or restore (a folder's
descendants too, as they follow it), and a permanent delete (`removed: true`, no file). The log
keeps the latest change of each file only, as Drive answers: `changes.list` gives each file
once, with its state now, so a file changed three times since a token is one change.

Page tokens are change numbers, as Drive's are: `getStartPageToken` is the number the next
change will get, and `changes.list` from a token answers the changes numbered from it on. The
counter lives in the store's database (SQLite's AUTOINCREMENT never reuses a number, a reset
included), so a token stays valid across server restarts. A token that is not a number, or is
beyond the next change, is refused as Drive refuses it: 400 "Invalid Value" on `pageToken`.
"""

from __future__ import annotations

import sqlite3

from .errors import ApiError, bad_request
from .persistence import Persistence
from .query import FILE_FIELDS, apply_fields, parse_fields, validate_fields
from .records import rfc3339
from .users import as_seen_by

CHANGE_LIST_FIELDS = frozenset({"kind", "nextPageToken", "newStartPageToken", "changes"})
CHANGE_FIELDS = frozenset({"kind", "changeType", "time", "removed", "fileId", "file", "driveId",
                           "drive"})
START_PAGE_TOKEN_FIELDS = frozenset({"kind", "startPageToken"})
# What Drive answers without `fields`: the change's own fields and the file's defaults.
DEFAULT_CHANGE_LIST_FIELDS = {
    "kind": None, "nextPageToken": None, "newStartPageToken": None,
    "changes": {"kind": None, "changeType": None, "time": None, "removed": None,
                "fileId": None, "file": {"kind": None, "id": None, "name": None,
                                         "mimeType": None}},
}
_SPACES = {"drive", "appDataFolder"}


class ChangeLog(Persistence):
    """The change log on top of the state dir's database (the `changes` table)."""

    def _record_changes(self, file_ids: list[str], time_ms: int, *, removed: bool = False) -> None:
        """Inside a transaction: the latest change of each file is now this one (REPLACE
        deletes the file's earlier change, and the new row takes the next number)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO changes (file_id, time_ms, removed) VALUES (?, ?, ?)",
            [(file_id, time_ms, int(removed)) for file_id in file_ids])

    def _next_change_number(self) -> int:
        row = self._db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return (row[0] if row else 0) + 1

    def start_page_token(self) -> str:
        with self._lock:
            return str(self._next_change_number())

    def changes_since(self, token: str, limit: int, include_removed: bool,
                      base_url: str) -> dict:
        """One page of changes from `token`: {changes, nextPageToken | newStartPageToken}."""
        with self._lock:
            start, next_number = _token_number(token), self._next_change_number()
            if start > next_number:
                raise invalid_page_token()
            sql = "SELECT * FROM changes WHERE id >= ?" + ("" if include_removed
                                                           else " AND removed = 0")
            rows = self._db.execute(sql + " ORDER BY id LIMIT ?", (start, limit + 1)).fetchall()
            page, more = rows[:limit], len(rows) > limit
            files = self._files_by_id([row["file_id"] for row in page if not row["removed"]],
                                      base_url)
        answer: dict = {"kind": "drive#changeList",
                        "changes": [_change(row, files.get(row["file_id"])) for row in page]}
        if more:
            answer["nextPageToken"] = str(page[-1]["id"] + 1)
        else:
            answer["newStartPageToken"] = str(next_number)
        return answer

    def _files_by_id(self, file_ids: list[str], base_url: str) -> dict[str, dict]:
        rows: list[sqlite3.Row] = []
        for chunk in (file_ids[i: i + 500] for i in range(0, len(file_ids), 500)):
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(f"SELECT * FROM files WHERE id IN ({marks})", chunk)
        return {resource["id"]: resource for resource in self._resources(rows, base_url)}


def _change(row: sqlite3.Row, file: dict | None) -> dict:
    change = {"kind": "drive#change", "changeType": "file", "fileId": row["file_id"],
              "removed": bool(row["removed"]) or file is None, "time": rfc3339(row["time_ms"])}
    if file is not None:
        change["file"] = file
    return change


def _token_number(token: str | None) -> int:
    if token is None or token == "":
        raise ApiError(400, "required", "Required parameter: pageToken", location="pageToken")
    if not token.isdigit() or int(token) < 1:
        raise invalid_page_token()
    return int(token)


def invalid_page_token() -> ApiError:
    return ApiError(400, "invalid", "Invalid Value", location="pageToken")


class ChangeRoutes:
    """Mixed into server.Handler: GET /drive/v3/changes/startPageToken and /drive/v3/changes."""

    def start_page_token(self, params: dict) -> None:
        self._drain()
        _check_drive_params(params)
        answer = {"kind": "drive#startPageToken", "startPageToken": self.store.start_page_token()}
        self._send_json(200, apply_fields(answer, self._change_fields(
            params, START_PAGE_TOKEN_FIELDS, None)))

    def list_changes(self, params: dict) -> None:
        # Here, not at the top: files.py reaches store.py (through pages.py), which needs this
        # module's ChangeLog first.
        from .files import _int_param

        self._drain()
        _check_drive_params(params)
        page_size = _int_param(params, "pageSize", 100, 1, 1000)
        include_removed = params.get("includeRemoved", "true").lower() != "false"
        tree = self._change_fields(params, CHANGE_LIST_FIELDS, DEFAULT_CHANGE_LIST_FIELDS)
        answer = self.store.changes_since(params.get("pageToken"), page_size, include_removed,
                                          self._base_url())
        if "drive" not in params.get("spaces", "drive").split(","):
            answer["changes"] = []  # appDataFolder only: this server keeps no app data
        for change in answer["changes"]:
            if "file" in change:
                change["file"] = as_seen_by(change["file"], self._user)
        self._send_json(200, apply_fields(answer, tree))

    def _change_fields(self, params: dict, allowed: frozenset, default: dict | None) -> dict | None:
        if "fields" not in params:
            return default
        tree = parse_fields(params["fields"])
        validate_fields(tree, allowed, {"changes": CHANGE_FIELDS})
        change = tree.get("changes") or {}
        if change.get("file"):
            validate_fields(change["file"], FILE_FIELDS)
        return tree


def _check_drive_params(params: dict) -> None:
    """Refuse what this server cannot answer (shared drives, unknown spaces), never ignore it."""
    if params.get("driveId"):
        raise bad_request("The local Drive server has no shared drives: driveId is not "
                          "supported.", location="driveId")
    spaces = set(params.get("spaces", "drive").split(","))
    if spaces - _SPACES:
        raise ApiError(400, "invalid", "Invalid Value", location="spaces")
