"""Drive's web pages on the local Drive server: where `webViewLink` and
DriveResource.folder_url lead when a person clicks them in Dagster's run metadata.

    GET /                          My Drive: the top-level folders and files
    GET /drive/folders/{id}        a folder: breadcrumb, children (folders first), trash note
    GET /file/d/{id}/view          a file: metadata, appProperties, revision, text preview
    GET /file/d/{id}/download      its content (Google Docs and Sheets as exported text)

Pages need no token, as Drive's web UI needs none from a signed-in browser. That is safe
only because the server listens on 127.0.0.1 and pages answer only requests addressed to a
loopback name: a web site whose DNS name is rebound to 127.0.0.1 sends its own name as Host
and is refused. Every value shown is user data and is escaped; pages have no JavaScript, and
their Content-Security-Policy forbids any. Downloads are attachments with a `sandbox` policy,
so an uploaded HTML file cannot run as this origin.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from . import convert
from .errors import ApiError
from .query import FOLDER_MIME
from .records import GOOGLE_APPS_PREFIX
from .store import Store

HTML_TYPE = "text/html; charset=utf-8"
PREVIEW_LIMIT = 200 * 1024  # bytes of text shown inline on a file's page
CHILDREN_LIMIT = 1000  # entries listed on a folder's page
_MAX_DEPTH = 64  # ancestors followed for a breadcrumb (the tree has no cycles; be sure anyway)
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
_TEXT_TYPES = {
    "application/json", "application/xml", "application/x-ndjson", "application/yaml",
    "application/x-yaml", "application/csv", "application/javascript",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # a page shows the Drive as it is now
}
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem 2rem; color: #202124; }
a { color: #1a73e8; text-decoration: none; } a:hover { text-decoration: underline; }
nav { color: #5f6368; margin-bottom: .5rem; } h1 { font-size: 1.4rem; margin: .2rem 0 1rem; }
table { border-collapse: collapse; } td, th { padding: .3rem .8rem .3rem 0; text-align: left;
  vertical-align: top; border-bottom: 1px solid #eee; } th { color: #5f6368; font-weight: 500; }
.note { background: #fef7e0; padding: .5rem .8rem; border-radius: 4px; display: inline-block; }
.trashed, .trashed a { color: #80868b; } .muted { color: #5f6368; }
pre { background: #f8f9fa; padding: .8rem; overflow-x: auto; white-space: pre-wrap; }
code { font-size: 12px; } ul.props { margin: 0; padding-left: 1rem; }
"""


@dataclass
class Response:
    """What the server sends for a page: `body`, or the file `stream` of `stream_size` bytes."""

    status: int
    body: bytes = b""
    content_type: str = HTML_TYPE
    headers: dict[str, str] = field(default_factory=lambda: dict(_PAGE_HEADERS))
    stream: Path | None = None
    stream_size: int = 0


def route(method: str, path: str) -> Callable[[Store, str | None], Response] | None:
    """The page for a request, as a function of (store, Host header); None if `path` is not a
    page (it is then an API route, with the API's token rules)."""
    if method != "GET":
        return None
    for pattern, page in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            args = match.groups()
            return lambda store, host: _answer(page, store, host, *args)
    return None


def _answer(page: Callable[..., Response], store: Store, host: str | None, *args) -> Response:
    if host is not None and not _is_loopback(host):
        return _error_page(403, "Not here", "These pages answer at 127.0.0.1 or localhost only.")
    try:
        return page(store, *args)
    except ApiError as error:
        if error.status == 404:
            missing = args[0] if args else ""
            return _error_page(404, "Not found", f"There is no file or folder with id {missing}.")
        raise


def _is_loopback(host: str) -> bool:
    name = host.strip().lower()
    if not name.startswith("["):
        name = name.rsplit(":", 1)[0]
    else:
        name = name[: name.find("]") + 1]
    return name in _LOOPBACK_NAMES


# -- pages ------------------------------------------------------------------------------------


def home_page(store: Store) -> Response:
    return folder_page(store, store.root_id)


def folder_page(store: Store, folder_id: str) -> Response:
    folder = store.get(folder_id, "")
    if folder["mimeType"] != FOLDER_MIME:  # Drive sends a file's id here to the file's page
        return _redirect(_file_url(folder["id"]))
    children, total = store.children(folder["id"], CHILDREN_LIMIT)
    parts = [_breadcrumb(store, folder), f"<h1>{_icon(folder)} {_e(folder['name'])}</h1>"]
    if folder.get("trashed"):
        parts.append(_trash_note(folder, "folder"))
    if not children:
        parts.append('<p class="muted">This folder is empty.</p>')
    else:
        if total > len(children):
            parts.append(f'<p class="note">Showing the first {len(children):,} of {total:,} '
                         "items.</p>")
        parts.append(_children_table(children))
    return _page(folder["name"], "".join(parts))


def file_page(store: Store, file_id: str) -> Response:
    file = store.get(file_id, "")
    if file["mimeType"] == FOLDER_MIME:
        return _redirect(_folder_url(file["id"]))
    parts = [_breadcrumb(store, file), f"<h1>{_icon(file)} {_e(file['name'])}</h1>"]
    if file.get("trashed"):
        parts.append(_trash_note(file, "file"))
    parts.append(f'<p><a href="{_e(_download_url(file["id"]))}">Download</a></p>')
    parts.append(_details_table(store, file))
    parts.append(_preview(store, file))
    return _page(file["name"], "".join(parts))


def download(store: Store, file_id: str) -> Response:
    row, blob = store.content(file_id)
    mime, name = row["mime_type"], row["name"]
    headers = {
        "Content-Disposition": _attachment(name),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "no-store",
    }
    if mime == FOLDER_MIME:
        return _error_page(404, "Not a file", "A folder has no content to download.")
    if mime.startswith(GOOGLE_APPS_PREFIX):
        # As Drive's "Download" does: the document exported (a Sheet as CSV, a Doc as text).
        text = blob.read_text(encoding="utf-8") if blob else ""
        if mime == convert.SPREADSHEET_MIME:
            data, mime, extension = text.encode("utf-8"), "text/csv; charset=utf-8", ".csv"
        else:
            data, mime, extension = convert.export_text(text), "text/plain; charset=utf-8", ".txt"
        headers["Content-Disposition"] = _attachment(name + extension)
        return Response(200, data, mime, headers)
    return Response(200, b"", _header_safe(mime), headers, stream=blob,
                    stream_size=(row["size"] or 0) if blob else 0)


_ROUTES: list[tuple[re.Pattern, Callable[..., Response]]] = [
    (re.compile(r"/"), home_page),
    (re.compile(r"/drive/folders/([^/]+)/?"), folder_page),
    (re.compile(r"/file/d/([^/]+)(?:/view)?/?"), file_page),
    (re.compile(r"/file/d/([^/]+)/download"), download),
]


# -- parts ------------------------------------------------------------------------------------


def _breadcrumb(store: Store, item: dict) -> str:
    """My Drive › … › the item's parent, each a link; the item itself is the page's title."""
    ancestors, seen = [], {item["id"]}
    parents = item.get("parents") or []
    while parents and len(ancestors) < _MAX_DEPTH and parents[0] not in seen:
        seen.add(parents[0])
        try:
            parent = store.get(parents[0], "")
        except ApiError:
            break
        ancestors.append(parent)
        parents = parent.get("parents") or []
    links = [_link(_folder_url(a["id"]), a["name"]) for a in reversed(ancestors)]
    return f"<nav>{' › '.join(links) or '&nbsp;'}</nav>"


def _children_table(children: list[dict]) -> str:
    rows = []
    for child in children:
        folder = child["mimeType"] == FOLDER_MIME
        url = _folder_url(child["id"]) if folder else _file_url(child["id"])
        trashed = ' <span class="muted">(in trash)</span>' if child.get("trashed") else ""
        rows.append(
            f'<tr{" class=trashed" if child.get("trashed") else ""}>'
            f"<td>{_icon(child)} {_link(url, child['name'])}{trashed}</td>"
            f"<td>{'Folder' if folder else _e(child['mimeType'])}</td>"
            f"<td>{'' if folder else _e(_size(child.get('size')))}</td>"
            f"<td>{_e(child.get('modifiedTime', ''))}</td>"
            f"<td>{_props(child.get('appProperties'))}</td></tr>"
        )
    head = "<tr><th>Name</th><th>Type</th><th>Size</th><th>Modified</th><th>appProperties</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _details_table(store: Store, file: dict) -> str:
    parents = []
    for parent_id in file.get("parents") or []:
        try:
            parents.append(_link(_folder_url(parent_id), store.get(parent_id, "")["name"]))
        except ApiError:
            parents.append(_e(parent_id))
    fields = [
        ("Id", f"<code>{_e(file['id'])}</code>"),
        ("In", ", ".join(parents) or '<span class="muted">no folder</span>'),
        ("Type", _e(file["mimeType"])),
        ("Size", _e(_size(file.get("size")))),
        ("MD5", f"<code>{_e(file['md5Checksum'])}</code>" if file.get("md5Checksum") else ""),
        ("Created", _e(file.get("createdTime", ""))),
        ("Modified", _e(file.get("modifiedTime", ""))),
        ("Version", _e(file.get("version", ""))),
        ("Head revision", f"<code>{_e(file['headRevisionId'])}</code>"
         if file.get("headRevisionId") else ""),
        ("Description", _e(file.get("description") or "")),
        ("appProperties", _props(file.get("appProperties"))),
        ("properties", _props(file.get("properties"))),
    ]
    rows = "".join(
        f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in fields if value
    )
    return f"<table>{rows}</table>"


def _preview(store: Store, file: dict) -> str:
    """The start of a text-like file's content, inline."""
    mime = file["mimeType"].split(";")[0].strip().lower()
    google_text = mime in (convert.DOCUMENT_MIME, convert.SPREADSHEET_MIME)
    if not (google_text or mime.startswith("text/") or mime in _TEXT_TYPES
            or mime.endswith(("+json", "+xml"))):
        return ""
    _row, blob = store.content(file["id"])
    if blob is None:
        return '<p class="muted">No content.</p>'
    with open(blob, "rb") as handle:
        data = handle.read(PREVIEW_LIMIT + 1)
    note = ""
    if len(data) > PREVIEW_LIMIT:
        data = data[:PREVIEW_LIMIT]
        note = (f'<p class="note">Showing the first {PREVIEW_LIMIT // 1024} KB; download the '
                "file for the rest.</p>")
    text = data.decode("utf-8", errors="replace")
    return f"<h2>Content</h2>{note}<pre>{_e(text)}</pre>"


def _trash_note(item: dict, kind: str) -> str:
    why = "was moved to the trash" if item.get("explicitlyTrashed") else \
        "is in the trash with a folder it is in"
    return f'<p class="note">This {kind} {why}.</p>'


def _props(props: dict | None) -> str:
    if not props:
        return ""
    items = "".join(f"<li><code>{_e(k)}</code> = <code>{_e(v)}</code></li>"
                    for k, v in sorted(props.items()))
    return f'<ul class="props">{items}</ul>'


def _icon(item: dict) -> str:
    return "&#128193;" if item["mimeType"] == FOLDER_MIME else "&#128196;"


# -- plumbing ---------------------------------------------------------------------------------


def _page(title: str, content: str, status: int = 200) -> Response:
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} - Local Drive</title><style>{_STYLE}</style></head>"
        f'<body><p class="muted"><a href="/">Local Drive</a></p>{content}</body></html>'
    )
    return Response(status, document.encode("utf-8"))


def _error_page(status: int, title: str, message: str) -> Response:
    return _page(title, f"<h1>{_e(title)}</h1><p>{_e(message)}</p>", status)


def _redirect(url: str) -> Response:
    response = _page("Moved", f'<p>See {_link(url, url)}.</p>', 302)
    response.headers["Location"] = url
    return response


def _folder_url(folder_id: str) -> str:
    return f"/drive/folders/{quote(folder_id, safe='')}"


def _file_url(file_id: str) -> str:
    return f"/file/d/{quote(file_id, safe='')}/view"


def _download_url(file_id: str) -> str:
    return f"/file/d/{quote(file_id, safe='')}/download"


def _link(url: str, text: str) -> str:
    return f'<a href="{_e(url)}">{_e(text)}</a>'


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _size(size: str | int | None) -> str:
    if size is None or size == "":
        return ""
    count = int(size)
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count:,} bytes)"
    return f"{count:,} bytes"


def _attachment(name: str) -> str:
    """Content-Disposition for `name`: an ASCII fallback and the exact UTF-8 name (RFC 6266)."""
    fallback = re.sub(r"[^A-Za-z0-9 ._()+,-]", "_", name).strip() or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _header_safe(mime: str) -> str:
    """A stored mimeType as a header value: it is client data, so no line breaks sneak in."""
    return mime if re.fullmatch(r"[ -~]+", mime) else "application/octet-stream"
