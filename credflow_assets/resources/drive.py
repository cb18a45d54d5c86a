"""Google Drive: one resource for production Drive and the local Drive server alike.

Local and production differ only in `api_url` and credentials; every call takes the same code
path through google-api-python-client. Nothing happens at import: the client is built on first
use (one per thread, as httplib2 connections are not thread-safe), heavy imports included.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

FOLDER_MIME = "application/vnd.google-apps.folder"
DOCUMENT_MIME = "application/vnd.google-apps.document"
DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
# What callers get back unless they ask for less.
FILE_FIELDS = (
    "id,name,mimeType,parents,appProperties,createdTime,modifiedTime,md5Checksum,size,"
    "webViewLink,trashed"
)
# Who made a file's latest revision (Drive's User resource, less what credflow does not read):
# the address a feed file's uploader is e-mailed at when it is not loaded.
LAST_MODIFYING_USER_FIELDS = "lastModifyingUser(emailAddress,displayName)"
# A change, unless callers ask for less: the file as it is now, with its folders.
CHANGE_FIELDS = f"fileId,removed,time,file({FILE_FIELDS})"
CHUNK_GRANULARITY = 256 * 1024  # Drive wants resumable chunks in multiples of this
DEFAULT_CHUNK_SIZE = 32 * CHUNK_GRANULARITY  # 8 MiB
DEFAULT_DOWNLOAD_CHUNK_SIZE = 8 * 1024 * 1024


class DriveError(RuntimeError):
    """A Drive call failed for good (after retries, or at once when retrying cannot help).

    The message names the operation, the HTTP status, Drive's reason and Drive's message;
    never a credential.
    """

    def __init__(self, operation: str, status: int | None, reason: str, message: str) -> None:
        self.operation, self.status, self.reason, self.api_message = (
            operation, status, reason, message,
        )
        status_text = f"HTTP {status}" if status is not None else "no HTTP response"
        super().__init__(f"Drive {operation} failed: {status_text} {reason}: {message}")


@dataclass(frozen=True)
class ChangePage:
    """One page of `changes.list`: the token it was read from, its changes, and either the
    token of the next page or (on the last) the start token for the next listing."""

    token: str
    changes: list[dict]
    next_token: Optional[str]
    new_start_token: Optional[str]


def escape_query_literal(value: str) -> str:
    """Escape `value` for a single-quoted literal in a Drive `q` (backslash first, then `'`),
    so names like `O'Brien, Ann` or `Back\\slash` match exactly instead of breaking the query."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


class DriveResource(dg.ConfigurableResource):
    """Google Drive v3 through google-api-python-client, with retries and clear errors.

    Production: leave `api_url` unset and give `service_account_file` (or rely on Application
    Default Credentials). Local: `api_url` is the local Drive server's root URL and `token` its
    bearer token (pass `EnvVar("CREDFLOW_DRIVE_TOKEN")`).
    """

    api_url: Optional[str] = Field(
        default=None,
        description="Root URL of a Drive-compatible server (the local one); None for Google.",
    )
    token: Optional[str] = Field(
        default=None, description="Bearer token for the local Drive server."
    )
    service_account_file: Optional[str] = Field(
        default=None, description="Service-account JSON key for production Drive."
    )
    num_retries: int = Field(
        default=5,
        description="Retries (randomized exponential backoff) for 5xx, 429 and rate-limit 403s.",
    )

    _clients: Any = PrivateAttr(default_factory=threading.local)

    # -- client ---------------------------------------------------------------------------------

    def _files(self) -> Any:
        """The `files()` collection of this thread's client, built on first use."""
        return self._service().files()

    def _changes(self) -> Any:
        """The `changes()` collection of this thread's client."""
        return self._service().changes()

    def _service(self) -> Any:
        service = getattr(self._clients, "service", None)
        if service is None:
            service = self._clients.service = self._build_service()
        return service

    def _build_service(self) -> Any:
        """The Drive client. Credentials: `service_account_file` when set (against Google or
        the local server alike); else `token` with `api_url`; else, for Google, Application
        Default Credentials. `api_url` alone sends no credentials."""
        import google_auth_httplib2
        from googleapiclient.discovery import build, build_from_document
        from googleapiclient.http import build_http

        http = build_http()  # keeps 308 out of httplib2's redirects, for resumable uploads
        if self.api_url and self.token and not self.service_account_file:
            from google.oauth2.credentials import Credentials

            # No refresh on 401: a wrong local token should surface as Drive's own error.
            http = google_auth_httplib2.AuthorizedHttp(
                Credentials(token=self.token), http=http, refresh_status_codes=()
            )
        elif self.service_account_file or not self.api_url:
            # What build(credentials=…) does, with a refused sign-in made a DriveError: google-
            # auth signs its JWT, fetches a token from the key's token_uri, and on a 401 signs
            # in again.
            credentials = _SignIn(self._google_credentials(), local=bool(self.api_url))
            http = google_auth_httplib2.AuthorizedHttp(credentials, http=http)
        if self.api_url:
            return build_from_document(_local_discovery_document(self.api_url), http=http)
        return build("drive", "v3", http=http, static_discovery=True, cache_discovery=False)

    def _google_credentials(self) -> Any:
        if self.service_account_file:
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_file(
                    self.service_account_file, scopes=[DRIVE_SCOPE]
                )
            except (OSError, ValueError) as error:  # messages name the problem, not the key
                raise DriveError(f"read service-account key {self.service_account_file}", None,
                                 type(error).__name__, str(error)) from error
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _project = google.auth.default(scopes=[DRIVE_SCOPE])
        except DefaultCredentialsError as error:
            raise DriveError("find Application Default Credentials", None,
                             "DefaultCredentialsError", str(error)) from error
        return credentials

    def _execute(self, operation: str, request: Any) -> Any:
        """Run one request. googleapiclient retries 5xx, 429 and 403 rate-limit reasons
        (`userRateLimitExceeded`, `rateLimitExceeded`) with randomized exponential backoff;
        anything else, or a failure after the last retry, becomes a DriveError."""
        with _drive_errors(operation):
            return request.execute(num_retries=self.num_retries)

    # -- queries --------------------------------------------------------------------------------

    def list_files(
        self,
        q: str,
        fields: str = FILE_FIELDS,
        order_by: Optional[str] = None,
        page_size: int = 1000,
    ) -> Iterator[dict]:
        """Every file matching `q`, page by page (`fields` are per-file fields); Drive includes
        trashed files unless `q` says `trashed = false`."""
        page_token = None
        while True:
            request = self._files().list(
                q=q, fields=f"nextPageToken,files({fields})", orderBy=order_by,
                pageSize=page_size, pageToken=page_token, spaces="drive",
                supportsAllDrives=True, includeItemsFromAllDrives=True,
            )
            page = self._execute(f"list files (q={q!r})", request)
            yield from page.get("files", [])
            page_token = page.get("nextPageToken")
            if not page_token:
                return

    def find_children_by_app_property(
        self, parent_id: str, key: str, value: str, *, mime_type: Optional[str] = None
    ) -> list[dict]:
        """Untrashed children of `parent_id` whose appProperty `key` is `value`, oldest first.

        Names are not unique on Drive; an id kept in appProperties is how credflow finds what
        it created. More than one result means a find-or-create race made twins.
        """
        q = (
            f"'{escape_query_literal(parent_id)}' in parents and trashed = false and "
            f"appProperties has {{ key='{escape_query_literal(key)}' and "
            f"value='{escape_query_literal(value)}' }}"
        )
        if mime_type:
            q += f" and mimeType = '{escape_query_literal(mime_type)}'"
        return list(self.list_files(q, order_by="createdTime"))

    def get_file(self, file_id: str, fields: str = FILE_FIELDS) -> dict:
        """Metadata of one file."""
        request = self._files().get(fileId=file_id, fields=fields, supportsAllDrives=True)
        return self._execute(f"get file {file_id}", request)

    def find_file(self, file_id: str, fields: str = FILE_FIELDS) -> Optional[dict]:
        """Metadata of one file, or None when Drive answers 404 (trashed files are found)."""
        try:
            return self.get_file(file_id, fields)
        except DriveError as error:
            if error.status == 404:
                return None
            raise

    # -- the changes feed -----------------------------------------------------------------------

    def start_page_token(self) -> str:
        """Drive's token for the next change: `list_changes` from it answers what changes
        after this call (take it before listing what is there now, so nothing falls between)."""
        request = self._changes().getStartPageToken(supportsAllDrives=True)
        return self._execute("get the changes start page token", request)["startPageToken"]

    def change_pages(self, page_token: str, fields: str = CHANGE_FIELDS,
                     page_size: int = 1000) -> Iterator[ChangePage]:
        """The changes since `page_token`, a page at a time (`fields` are per-change fields).
        Each page says the token it was read from and the token after it: `next_token` while
        more follow, `new_start_token` on the last page. A token Drive no longer knows (or
        never issued) is a DriveError with status 400 or 404."""
        while True:
            request = self._changes().list(
                pageToken=page_token, pageSize=page_size, includeRemoved=True,
                restrictToMyDrive=False, spaces="drive", supportsAllDrives=True,
                includeItemsFromAllDrives=True,
                fields=f"nextPageToken,newStartPageToken,changes({fields})",
            )
            answer = self._execute("list changes", request)
            yield ChangePage(token=page_token, changes=answer.get("changes", []),
                             next_token=answer.get("nextPageToken"),
                             new_start_token=answer.get("newStartPageToken"))
            if not answer.get("nextPageToken"):
                return
            page_token = answer["nextPageToken"]

    def list_changes(self, page_token: str,
                     fields: str = CHANGE_FIELDS) -> tuple[list[dict], str]:
        """Every change since `page_token`, paged through, and the token to list from next."""
        changes: list[dict] = []
        for page in self.change_pages(page_token, fields):
            changes += page.changes
            if page.new_start_token:
                return changes, page.new_start_token
        raise DriveError("list changes", None, "noNewStartPageToken",
                         "the last page of changes had no newStartPageToken")

    # -- writes ---------------------------------------------------------------------------------

    def create_folder(
        self,
        name: str,
        parent_id: Optional[str],
        app_properties: Optional[dict[str, str]] = None,
        folder_id: Optional[str] = None,
    ) -> dict:
        """Create a folder under `parent_id` (None: the top of My Drive). A `folder_id` from
        generateIds makes a retried create idempotent: the second attempt fails as a
        duplicate (409) instead of making a twin."""
        body: dict[str, Any] = {"name": name, "mimeType": FOLDER_MIME}
        if parent_id is not None:
            body["parents"] = [parent_id]
        if app_properties:
            body["appProperties"] = app_properties
        if folder_id:
            body["id"] = folder_id
        request = self._files().create(body=body, fields=FILE_FIELDS, supportsAllDrives=True)
        return self._execute(f"create folder {name!r} in {parent_id or 'root'}", request)

    def generate_ids(self, count: int = 1) -> list[str]:
        """Ids to create files with, so a create can be retried without making twins."""
        request = self._files().generateIds(count=count, space="drive")
        return self._execute("generate ids", request)["ids"]

    def upload_file(
        self,
        local_path: str | os.PathLike,
        name: str,
        parent_id: str,
        *,
        mime_type: str,
        convert_to: Optional[str] = None,
        app_properties: Optional[dict[str, str]] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> dict:
        """Upload a local file under `parent_id`; `convert_to` (e.g. the Google Docs type)
        imports it. Files up to one chunk go in one multipart request; bigger ones stream as a
        resumable upload in `chunk_size` pieces, each retried on its own."""
        body: dict[str, Any] = {"name": name, "parents": [parent_id]}
        if convert_to:
            body["mimeType"] = convert_to
        if app_properties:
            body["appProperties"] = app_properties
        media = _media(local_path, mime_type, chunk_size)
        request = self._files().create(
            body=body, media_body=media, fields=FILE_FIELDS, supportsAllDrives=True
        )
        return self._send_media(f"upload {name!r} to {parent_id}", request, media)

    def update_file(
        self,
        file_id: str,
        *,
        name: Optional[str] = None,
        app_properties: Optional[dict[str, Optional[str]]] = None,
        add_parents: Optional[str | Sequence[str]] = None,
        remove_parents: Optional[str | Sequence[str]] = None,
        local_path: Optional[str | os.PathLike] = None,
        mime_type: Optional[str] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> dict:
        """Rename, move (add/remove parents), merge appProperties (a None value deletes a key)
        and/or replace the content of a file, in one request."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if app_properties is not None:
            body["appProperties"] = app_properties
        kwargs: dict[str, Any] = {"fileId": file_id, "body": body, "fields": FILE_FIELDS,
                                  "supportsAllDrives": True}
        if add_parents:
            kwargs["addParents"] = _comma_list(add_parents)
        if remove_parents:
            kwargs["removeParents"] = _comma_list(remove_parents)
        operation = f"update file {file_id}"
        if local_path is None:
            return self._execute(operation, self._files().update(**kwargs))
        media = _media(local_path, mime_type or "application/octet-stream", chunk_size)
        request = self._files().update(media_body=media, **kwargs)
        return self._send_media(operation, request, media)

    def delete_file(self, file_id: str) -> None:
        """Delete a file for good (a folder with everything in it), skipping the trash."""
        request = self._files().delete(fileId=file_id, supportsAllDrives=True)
        self._execute(f"delete file {file_id}", request)

    # -- content --------------------------------------------------------------------------------

    def download_file(
        self,
        file_id: str,
        dest_path: str | os.PathLike,
        *,
        chunk_size: int = DEFAULT_DOWNLOAD_CHUNK_SIZE,
        digest=None,
    ) -> Path:
        """Stream a binary file's content to `dest_path` in chunks; the file appears there only
        when complete (it is written to a `.part` file first). `digest` (a `hashlib` object),
        when given, is fed the content as it arrives: no second read of the file."""
        from googleapiclient.http import MediaIoBaseDownload

        dest = Path(dest_path)
        partial = dest.with_name(dest.name + ".part")
        request = self._files().get_media(fileId=file_id, supportsAllDrives=True)
        try:
            with open(partial, "wb") as handle, _drive_errors(f"download file {file_id}"):
                sink = handle if digest is None else _Digesting(handle, digest)
                downloader = MediaIoBaseDownload(sink, request, chunksize=chunk_size)
                done = False
                while not done:
                    _status, done = downloader.next_chunk(num_retries=self.num_retries)
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    def export_file(self, file_id: str, mime_type: str = "text/plain") -> bytes:
        """A Google Doc's content converted to `mime_type` (Drive caps exports at 10 MB).
        Drive's text/plain starts with a UTF-8 byte-order mark and uses CRLF line ends."""
        request = self._files().export_media(fileId=file_id, mimeType=mime_type)
        return self._execute(f"export file {file_id} as {mime_type}", request)

    # -- links ----------------------------------------------------------------------------------

    def folder_url(self, folder_id: str) -> str:
        """Where a person opens the folder (for run metadata)."""
        base = self.api_url or "https://drive.google.com/"
        return f"{base.rstrip('/')}/drive/folders/{folder_id}"

    # -- internals ------------------------------------------------------------------------------

    def _send_media(self, operation: str, request: Any, media: Any) -> dict:
        if not media.resumable():
            return self._execute(operation, request)
        # Not next_chunk(num_retries=N): googleapiclient 2.202 resends the chunk's stream slice
        # that the failed attempt already consumed, so the retry declares N bytes and sends
        # none. Retrying here instead lets next_chunk ask the server what it has (its error
        # state sends "bytes */total") and re-slice the file from there.
        import httplib2
        from googleapiclient.errors import HttpError

        failures = 0
        with _drive_errors(operation):
            while True:
                try:
                    _status, response = request.next_chunk(num_retries=0)
                except (HttpError, OSError, httplib2.HttpLib2Error) as error:
                    if failures >= self.num_retries or not _retryable(error):
                        raise
                    failures += 1
                    time.sleep(random.random() * 2**failures)
                    continue
                failures = 0
                if response is not None:
                    return response


@contextmanager
def _drive_errors(operation: str) -> Iterator[None]:
    """Turn googleapiclient and transport failures into DriveError for `operation`."""
    import httplib2
    from googleapiclient.errors import HttpError

    try:
        yield
    except HttpError as error:  # ResumableUploadError included
        status, reason, message = _http_error_details(error)
        raise DriveError(operation, status, reason, message) from error
    except (OSError, httplib2.HttpLib2Error) as error:
        raise DriveError(operation, None, type(error).__name__, str(error)) from error


def _retryable(error: BaseException) -> bool:
    """What googleapiclient itself retries: 5xx, 429, rate-limit 403s and transport errors."""
    status = getattr(getattr(error, "resp", None), "status", None)
    if status is None:
        return True
    _status, reason, _message = _http_error_details(error)
    return status >= 500 or status == 429 or (
        status == 403 and reason in ("userRateLimitExceeded", "rateLimitExceeded")
    )


def _http_error_details(error: Any) -> tuple[int | None, str, str]:
    status = getattr(getattr(error, "resp", None), "status", None)
    reason, message = "unknown", str(error)
    try:
        body = json.loads(error.content.decode("utf-8"))["error"]
        message = body.get("message", message)
        details = body.get("errors") or [{}]
        reason = details[0].get("reason") or body.get("status") or reason
    except (AttributeError, ValueError, KeyError, TypeError, IndexError):
        reason = getattr(error, "reason", None) or reason
    return status, reason, message


def _media(local_path: str | os.PathLike, mime_type: str, chunk_size: int) -> Any:
    from googleapiclient.http import MediaFileUpload

    if chunk_size <= 0 or chunk_size % CHUNK_GRANULARITY:
        raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_GRANULARITY} bytes")
    size = os.path.getsize(local_path)
    return MediaFileUpload(
        str(local_path), mimetype=mime_type, chunksize=chunk_size, resumable=size > chunk_size
    )


def _comma_list(ids: str | Sequence[str]) -> str:
    return ids if isinstance(ids, str) else ",".join(ids)


def _local_discovery_document(api_url: str) -> dict:
    """The bundled Drive v3 discovery document, pointed at `api_url` for every call
    (uploads included, which `client_options` alone would still send to https)."""
    from importlib import resources

    root = api_url if api_url.endswith("/") else api_url + "/"
    path = resources.files("googleapiclient") / "discovery_cache/documents/drive.v3.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document.update(rootUrl=root, mtlsRootUrl=root, baseUrl=f"{root}drive/v3/")
    return document


class _SignIn:
    """google-auth credentials for AuthorizedHttp, with a refused sign-in raised as DriveError
    (google-auth's RefreshError or TransportError would escape `_execute` as a bare traceback
    naming neither the key nor the token endpoint's answer).

    `local`: for the local Drive server, skip google-auth's Regional Access Boundary lookup.
    After a sign-in, google-auth (2.62 here) asks Google's IAM Credentials API for it from a
    background thread, sending the access token: the local server's token has no business
    there, and nothing there can answer for a local account.
    """

    def __init__(self, credentials: Any, *, local: bool) -> None:
        self._credentials, self._local = credentials, local

    def __getattr__(self, name: str) -> Any:  # token, valid, universe_domain, …
        if name == "_credentials":  # not set yet (a copy being made): no endless recursion
            raise AttributeError(name)
        return getattr(self._credentials, name)

    def before_request(self, request: Any, method: str, url: str, headers: dict) -> None:
        if not self._credentials.valid:
            self.refresh(request)  # here, so that a refusal is translated
        if self._local:
            self._credentials.apply(headers)
        else:
            self._credentials.before_request(request, method, url, headers)

    def refresh(self, request: Any) -> None:
        from google.auth.exceptions import GoogleAuthError

        call = _RecordedCall(request)
        try:
            self._credentials.refresh(call)
        except GoogleAuthError as error:
            who = getattr(self._credentials, "service_account_email", None) or "Google"
            where = f" at {call.url}" if call.url else ""
            reason, message = _sign_in_refusal(error)
            raise DriveError(f"sign-in as {who}{where}", call.status, reason, message) from error


class _RecordedCall:
    """google-auth's transport, keeping the URL and HTTP status of the last call it made, for
    the error message of a refused sign-in."""

    def __init__(self, request: Any) -> None:
        self._request, self.url, self.status = request, None, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.url, self.status = kwargs.get("url", args[0] if args else None), None
        response = self._request(*args, **kwargs)
        self.status = response.status
        return response


def _sign_in_refusal(error: Exception) -> tuple[str, str]:
    """(reason, message) of a sign-in error: OAuth's `error`/`error_description` when the token
    endpoint answered in that shape, else Drive's error shape, else the exception itself."""
    answer = error.args[1] if len(error.args) > 1 else None
    if isinstance(answer, dict):
        if isinstance(answer.get("error"), str):
            return answer["error"], str(answer.get("error_description") or "")
        if isinstance(answer.get("error"), dict):
            detail = answer["error"]
            first = (detail.get("errors") or [{}])[0]
            reason = first.get("reason") if isinstance(first, dict) else None
            return str(reason or "error"), str(detail.get("message") or "")
    return type(error).__name__, str(error.args[0] if error.args else error)


class _Digesting:
    """A binary file that also feeds what is written to a hash (a chunk is written once,
    after its request succeeded, so retries do not feed it twice)."""

    def __init__(self, handle, digest):
        self.handle, self.digest = handle, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)
