"""The admin routes (`/_admin/…`, the server's own token only): faults, reset, health,
service-account keys and tokens acting as a named user (users.py)."""

from __future__ import annotations

from .errors import ApiError


class AdminRoutes:
    """Mixed into server.Handler: answers `/_admin/…` requests."""

    def _admin(self, method: str, path: str) -> None:
        faults = self.server.faults
        if path == "/_admin/faults" and method == "POST":
            self._send_json(200, faults.configure(self._json_body()))
        elif path == "/_admin/faults" and method == "GET":
            self._drain()
            self._send_json(200, faults.state())
        elif path == "/_admin/reset" and method == "POST":
            self._drain()
            self.store.reset()
            self._send_json(200, {"reset": True, "faults": faults.configure({})})
        elif path == "/_admin/service_accounts" and method == "POST":
            self._send_json(200, self._register_key(self._json_body()))
        elif path == "/_admin/service_accounts" and method == "GET":
            self._drain()
            keys = self.store.service_account_keys()
            self._send_json(200, {"keys": [
                {"client_email": k["client_email"], "private_key_id": k["key_id"]} for k in keys
            ]})
        elif path == "/_admin/users" and method == "POST":
            self._send_json(200, self._mint_user_token(self._json_body()))
        elif path == "/_admin/health" and method == "GET":
            self._drain()
            self._send_json(200, {"ok": True, "rootFolderId": self.store.root_id})
        else:
            raise ApiError(404, "notFound", f"Not Found: {method} {path}", location_type="path")
