"""HTTP handling: the subset of the Drive v3 REST API credflow uses, plus `/_admin/…` for tests.

API routes (need `Authorization: Bearer <token>`: the server's own token, or one minted by
POST /token for a service account):
    GET    /drive/v3/files                       list (q, fields, orderBy, pageSize, pageToken)
    POST   /drive/v3/files                       create from metadata (a client-supplied id is kept)
    GET    /drive/v3/files/generateIds           ids usable in creates
    GET    /drive/v3/files/{id}                  metadata, or content with alt=media
    GET    /drive/v3/files/{id}/export           Google Doc as text/plain, text/markdown or PDF;
                                                 Google Sheet (imported from CSV) as text/csv
    PATCH  /drive/v3/files/{id}                  metadata update (addParents/removeParents)
    DELETE /drive/v3/files/{id}                  permanent delete
    POST   /upload/drive/v3/files                uploadType=media|multipart|resumable
    PATCH  /upload/drive/v3/files/{id}           the same, replacing content
    PUT    /upload/drive/v3/files[/{id}]?upload_id=…   resumable chunks (308 + Range until done)

Admin routes (the server's own token only):
    GET|POST /_admin/faults, POST /_admin/reset, GET /_admin/health
    GET|POST /_admin/service_accounts            registered keys / register a key's public half

No token (see pages.py and oauth.py):
    GET    /, /drive/folders/{id}, /file/d/{id}/view, /file/d/{id}/download   web pages
    POST   /token                                service-account sign-in (JWT-bearer grant)

The server listens on 127.0.0.1 only: the pages and /token are open to whoever can connect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from . import convert, oauth, pages
from .query import (
    FILE_FIELDS,
    FILE_LIST_FIELDS,
    QueryError,
    apply_fields,
    compile_order_by,
    compile_q,
    parse_fields,
    parse_q,
    validate_fields,
)
from .store import GOOGLE_APPS_PREFIX, ApiError, Media, Store, bad_request, iter_file, new_id

CHUNK_GRANULARITY = 256 * 1024  # non-final resumable chunks must be multiples of this
MAX_IN_MEMORY_BODY = 64 * 1024 * 1024
MAX_TOKEN_REQUEST = 64 * 1024  # a JWT-bearer grant is a few KB
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # token answers, as RFC 6749 5.1
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
DEFAULT_FILE_FIELDS = {"kind": None, "id": None, "name": None, "mimeType": None}
DEFAULT_LIST_FIELDS = {
    "kind": None, "nextPageToken": None, "incompleteSearch": None, "files": DEFAULT_FILE_FIELDS,
}
_FAULT_ERRORS = {
    400: ("global", "badRequest", "Bad Request"),
    401: ("global", "authError", "Invalid Credentials"),
    403: ("usageLimits", "userRateLimitExceeded", "User Rate Limit Exceeded"),
    404: ("global", "notFound", "Not Found"),
    429: ("usageLimits", "rateLimitExceeded", "Rate Limit Exceeded"),
}


class Faults:
    """Injected failures for Drive requests: the next N, or a seeded random share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure({})

    def configure(self, spec: dict) -> dict:
        known = {"fail_next", "status", "rate", "statuses", "seed", "methods"}
        if not isinstance(spec, dict) or set(spec) - known:
            raise bad_request(f"Fault spec keys must be among {sorted(known)}.")
        try:
            fail_next = int(spec.get("fail_next", 0))
            status = int(spec.get("status", 429))
            rate = float(spec.get("rate", 0.0))
            statuses = [int(s) for s in spec.get("statuses", [429, 403, 500])]
            methods = [m.upper() for m in spec["methods"]] if spec.get("methods") else None
        except (TypeError, ValueError) as error:
            raise bad_request(f"Invalid fault spec: {error}") from None
        if fail_next < 0 or not 0.0 <= rate <= 1.0 or not statuses:
            raise bad_request("Invalid fault spec: fail_next >= 0, 0 <= rate <= 1, statuses.")
        with self._lock:
            self.fail_next, self.status, self.rate = fail_next, status, rate
            self.statuses, self.methods = statuses, methods
            self.random = random.Random(spec.get("seed"))
            self.injected = self.requests = 0
        return self.state()

    def pick(self, method: str) -> int | None:
        """The status to fail this request with, or None to serve it."""
        with self._lock:
            self.requests += 1
            if self.methods is not None and method not in self.methods:
                return None
            if self.fail_next > 0:
                self.fail_next -= 1
                self.injected += 1
                return self.status
            if self.rate and self.random.random() < self.rate:
                self.injected += 1
                return self.random.choice(self.statuses)
        return None

    def state(self) -> dict:
        return {
            "fail_next": self.fail_next, "status": self.status, "rate": self.rate,
            "statuses": self.statuses, "methods": self.methods,
            "injected": self.injected, "requests": self.requests,
        }


def fault_error(status: int) -> ApiError:
    domain, reason, message = _FAULT_ERRORS.get(status, ("global", "backendError", "Backend Error"))
    return ApiError(status, reason, message, domain=domain)


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


class Handler(BaseHTTPRequestHandler):
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
        for route_method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match and method in route_method:
                return getattr(self, handler), match.groups()
        raise ApiError(404, "notFound", f"Not Found: {method} {path}", location_type="path")

    def _authenticate(self, *, admin: bool) -> None:
        """The server's own token opens everything; a service account's minted token opens the
        Drive API only (an admin call can wipe the Drive, which no Drive user can)."""
        header = self.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, "authError", "Login Required.", location="Authorization",
                           location_type="header")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        own = hmac.compare_digest(credential.encode(), self.server.token.encode())
        minted = not admin and self.server.access_tokens.valid(credential)
        if scheme.lower() != "bearer" or not (own or minted):
            raise ApiError(401, "authError", "Invalid Credentials", location="Authorization",
                           location_type="header")

    # -- files: metadata ------------------------------------------------------------------------

    def list_files(self, params: dict) -> None:
        page_size = _int_param(params, "pageSize", 100, 1, 1000)
        where, args = compile_q(parse_q(params.get("q")), root_id=self.store.root_id)
        order = compile_order_by(params.get("orderBy"))
        key = hashlib.sha256(f"{params.get('q')}|{params.get('orderBy')}".encode()).hexdigest()
        offset = _decode_page_token(params.get("pageToken"), key[:16])
        files, more = self.store.list(where, args, order, offset, page_size, self._base_url())
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
        self._send_file(self.store.create(meta, None, self._base_url()), params)

    def update_file(self, params: dict, file_id: str) -> None:
        meta = self._json_body()
        add, remove = _id_list(params.get("addParents")), _id_list(params.get("removeParents"))
        self._send_file(
            self.store.update(file_id, meta, add, remove, None, self._base_url()), params
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

    # -- files: content -------------------------------------------------------------------------

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

    # -- uploads --------------------------------------------------------------------------------

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
                resource = self.store.create(meta, media, self._base_url())
            else:
                add = _id_list(params.get("addParents"))
                remove = _id_list(params.get("removeParents"))
                resource = self.store.update(file_id, meta, add, remove, media, self._base_url())
        finally:
            media.path.unlink(missing_ok=True)
        self._send_file(resource, params)

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

    # -- sign-in --------------------------------------------------------------------------------

    def _token_grant(self) -> None:
        """Google's token endpoint, for google-auth's service-account credentials (oauth.py)."""
        if self._remaining > MAX_TOKEN_REQUEST:
            self._drain()
            error = oauth.GrantError("invalid_request", "The token request is too large.")
        else:
            form = dict(parse_qsl(self._read(self._remaining).decode("utf-8", "replace")))
            own_url = f"http://127.0.0.1:{self.server.server_address[1]}{oauth.TOKEN_PATH}"
            audiences = {own_url, self._base_url() + oauth.TOKEN_PATH.lstrip("/")}
            try:
                body = oauth.grant(form, self._account_keys, audiences, self.server.access_tokens)
            except oauth.GrantError as refused:
                error = refused
            else:
                self._send_json(200, body, _NO_STORE)
                return
        self._send_json(error.status, error.body(), _NO_STORE)

    def _account_keys(self, client_email: str) -> list[dict]:
        return self.store.service_account_keys(client_email)

    def _register_key(self, body: dict) -> dict:
        email, key_id, pem = (body.get(k) for k in ("client_email", "private_key_id", "public_key"))
        if not isinstance(email, str) or "@" not in email:
            raise bad_request("client_email must be a service account's email address.")
        if not isinstance(key_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", key_id):
            raise bad_request("private_key_id must be the key's id (letters, digits, ._-).")
        try:
            pem = oauth.checked_public_key(pem if isinstance(pem, str) else "")
        except ValueError as error:
            raise bad_request(str(error)) from None
        self.store.add_service_account_key(key_id, email, pem)
        return {"client_email": email, "private_key_id": key_id, "registered": True}

    # -- admin ----------------------------------------------------------------------------------

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
        elif path == "/_admin/health" and method == "GET":
            self._drain()
            self._send_json(200, {"ok": True, "rootFolderId": self.store.root_id})
        else:
            raise ApiError(404, "notFound", f"Not Found: {method} {path}", location_type="path")

    # -- request bodies -------------------------------------------------------------------------

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

    # -- responses ------------------------------------------------------------------------------

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


_ROUTES = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        (("GET",), r"/drive/v3/files", "list_files"),
        (("POST",), r"/drive/v3/files", "create_file"),
        (("GET",), r"/drive/v3/files/generateIds", "generate_ids"),
        (("GET",), r"/drive/v3/files/([^/]+)", "get_file"),
        (("PATCH",), r"/drive/v3/files/([^/]+)", "update_file"),
        (("DELETE",), r"/drive/v3/files/([^/]+)", "delete_file"),
        (("GET",), r"/drive/v3/files/([^/]+)/export", "export_file"),
        (("POST",), r"/upload/drive/v3/files", "upload_create"),
        (("PATCH",), r"/upload/drive/v3/files/([^/]+)", "upload_update"),
        (("PUT",), r"/upload/drive/v3/files(?:/([^/]+))?", "upload_chunk"),
    ]
]


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


def _id_list(raw: str | None) -> list[str]:
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
