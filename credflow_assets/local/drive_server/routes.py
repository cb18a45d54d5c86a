"""The routes: which handler answers which request. server.py dispatches on this table.

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
    GET    /drive/v3/changes/startPageToken      the token of the next change (changes.py)
    GET    /drive/v3/changes                     changes from pageToken (pageSize, fields,
                                                 includeRemoved, spaces); each file once
    POST   /upload/drive/v3/files                uploadType=media|multipart|resumable
    PATCH  /upload/drive/v3/files/{id}           the same, replacing content
    PUT    /upload/drive/v3/files[/{id}]?upload_id=…   resumable chunks (308 + Range until done)

Admin routes (the server's own token only):
    GET|POST /_admin/faults, POST /_admin/reset, GET /_admin/health
    GET|POST /_admin/service_accounts            registered keys / register a key's public half
    POST     /_admin/users                       a token acting as {"displayName", "emailAddress"}

No token (see pages.py and oauth.py):
    GET    /, /drive/folders/{id}, /file/d/{id}/view, /file/d/{id}/download   web pages
    POST   /token                                service-account sign-in (JWT-bearer grant)

The server listens on 127.0.0.1 only: the pages and /token are open to whoever can connect.
"""

from __future__ import annotations

import re

from .errors import ApiError

# (HTTP methods, path pattern, name of the Handler method that answers); groups are its arguments.
ROUTES = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        (("GET",), r"/drive/v3/files", "list_files"),
        (("POST",), r"/drive/v3/files", "create_file"),
        (("GET",), r"/drive/v3/files/generateIds", "generate_ids"),
        (("GET",), r"/drive/v3/files/([^/]+)", "get_file"),
        (("PATCH",), r"/drive/v3/files/([^/]+)", "update_file"),
        (("DELETE",), r"/drive/v3/files/([^/]+)", "delete_file"),
        (("GET",), r"/drive/v3/files/([^/]+)/export", "export_file"),
        (("GET",), r"/drive/v3/changes/startPageToken", "start_page_token"),
        (("GET",), r"/drive/v3/changes", "list_changes"),
        (("POST",), r"/upload/drive/v3/files", "upload_create"),
        (("PATCH",), r"/upload/drive/v3/files/([^/]+)", "upload_update"),
        (("PUT",), r"/upload/drive/v3/files(?:/([^/]+))?", "upload_chunk"),
    ]
]


def find_route(method: str, path: str) -> tuple[str, tuple]:
    """(handler method name, its path arguments) for a request under the API, or a 404."""
    for route_method, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match and method in route_method:
            return handler, match.groups()
    raise ApiError(404, "notFound", f"Not Found: {method} {path}", location_type="path")
