"""The local Drive server: an HTTP server on 127.0.0.1 and its request handler, which
authenticates and dispatches each request (the routes are in routes.py).

The handler is assembled from one module per concern: files.py (metadata), changes.py
(the changes feed), media.py
(downloads, exports), uploads.py and resumable.py (content in), auth.py (tokens, sign-in),
admin.py and faults.py (test controls), bodies.py and responses.py (the wire). The web pages
(pages.py) and the token endpoint (oauth.py) need no token.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from . import oauth, pages
from .admin import AdminRoutes
from .auth import Auth
from .bodies import RequestBodies
from .changes import ChangeRoutes
from .errors import ApiError
from .faults import Faults, fault_error
from .files import FileRoutes
from .media import MediaRoutes
from .query import QueryError
from .responses import Responses
from .resumable import ResumableUploads
from .routes import find_route
from .store import Store
from .uploads import UploadRoutes


class DriveServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, store: Store, token: str) -> None:
        self.store, self.token, self.faults = store, token, Faults()
        self.access_tokens = oauth.AccessTokens()
        self._session_locks: dict[str, threading.Lock] = {}
        self._session_locks_guard = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)

    def session_lock(self, session_id: str) -> threading.Lock:
        with self._session_locks_guard:
            return self._session_locks.setdefault(session_id, threading.Lock())


class Handler(
    FileRoutes, ChangeRoutes, MediaRoutes, UploadRoutes, ResumableUploads, AdminRoutes, Auth,
    RequestBodies, Responses, BaseHTTPRequestHandler,
):
    protocol_version = "HTTP/1.1"
    server: DriveServer
    server_version = "credflow-local-drive/1"
    timeout = 60  # seconds a connection may sit idle or mid-body before it is dropped
    # Headers and body go out in separate writes; with Nagle on, every keep-alive response
    # waited ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, params = unquote(url.path), dict(parse_qsl(url.query, keep_blank_values=True))
        self._remaining = int(self.headers.get("Content-Length") or 0)
        self.store = self.server.store
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raise ApiError(411, "lengthRequired", "Length Required: send a Content-Length.")
            page = pages.route(method, path)
            if page is not None:
                self._drain()
                self._send_page(page(self.store, self.headers.get("Host")))
                return
            if method == "POST" and path == oauth.TOKEN_PATH:
                self._token_grant()
                return
            self._authenticate(admin=path.startswith("/_admin/"))
            if method == "POST" and self.headers.get("X-HTTP-Method-Override", "").upper() == "GET":
                # googleapiclient turns a GET whose URL is too long into a POST carrying the
                # query string as a form body; Google honours the override, and so do we.
                method = "GET"
                params.update(parse_qsl(self._body().decode(), keep_blank_values=True))
            if path.startswith("/_admin/"):
                self._admin(method, path)
                return
            handler, args = self._route(method, path)
            fault = self.server.faults.pick(method)
            if fault is not None:
                raise fault_error(fault)
            handler(params, *args)
        except QueryError as error:
            reason = "invalid" if error.location == "q" else "invalidParameter"
            prefix = "Invalid Value: " if error.location == "q" else ""
            self._send_error(ApiError(400, reason, prefix + str(error), location=error.location))
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client is gone or stalled: nobody to answer
        except Exception:  # noqa: BLE001 - a server answers, logs and carries on
            traceback.print_exc(file=sys.stderr)
            self._send_error(ApiError(500, "backendError", "Backend Error"))

    def _route(self, method: str, path: str) -> tuple[Callable, tuple]:
        handler, args = find_route(method, path)
        return getattr(self, handler), args


def serve(state_dir: Path, port: int, token: str) -> None:
    """Run the server until SIGTERM/SIGINT."""
    import signal

    store = Store(state_dir)
    server = DriveServer(port, store, token)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"local Drive server on http://127.0.0.1:{port}/ (state {state_dir})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        store.close()
