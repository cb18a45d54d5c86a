"""The local Drive server stays honest: what credflow asks of Drive, and what the stand-in
answers, exists in Google's own discovery document for Drive v3 (the one google-api-python-client
ships, `googleapiclient/discovery_cache/documents/drive.v3.json`).

credflow must never come to rely on something only the stand-in does. Three checks:
- statically, credflow's side: every `files().<method>(…)` and `changes().<method>(…)` call
  in resources/drive.py, its keyword parameters and request-body keys, and every `fields=`
  selector and `orderBy` key credflow requests anywhere;
- statically, the stand-in's side: its routes, the fields it accepts and the sort keys it
  implements;
- dynamically: a real session of DriveResource calls against the stand-in (run in-process with
  a recording request handler), every request's method and query parameters, and every key of
  every JSON object it answered, recursively, with its JSON type.

Each check fails listing exactly what Google's document does not have. The stand-in's routes
that are not Drive's API are excluded by name: `/_admin/*` (test controls), `/token` (Google's
OAuth token endpoint, not Drive's API) and the web pages (`/`, `/drive/folders/…`, `/file/d/…`).
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import threading
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import googleapiclient
import pytest

from credflow_assets_tests.conftest import REPO

DISCOVERY_PATH = Path(googleapiclient.__file__).parent / "discovery_cache/documents/drive.v3.json"
DRIVE_RESOURCE = REPO / "credflow_assets" / "resources" / "drive.py"
# Keyword arguments googleapiclient itself takes on every generated method: the request body
# (only for methods with a `request` schema) and the media to upload (only where Google says
# the method supports media upload).
CLIENT_BODY_ARGUMENTS = {"body"}
CLIENT_MEDIA_ARGUMENTS = {"media_body", "media_mime_type"}
# googleapiclient's `<method>_media` variants: the same Drive method, with alt=media.
MEDIA_DOWNLOAD_VARIANTS = {"files.get_media": "files.get", "files.export_media": "files.export"}
# The Drive resources credflow calls, by the DriveResource accessor that reaches each.
DRIVE_COLLECTIONS = {"_files": "files", "_changes": "changes"}
# Google's error body (developers.google.com/drive/api/guides/handle-errors); not described by
# the discovery document, which covers successful responses only.
GOOGLE_ERROR_KEYS = {"code", "message", "errors", "status", "details"}
GOOGLE_ERROR_DETAIL_KEYS = {"domain", "reason", "message", "location", "locationType",
                            "extendedHelp", "sendReport"}
# The query parameter of a resumable session URI (the `Location` Google answers when the
# session starts; developers.google.com/drive/api/guides/manage-uploads#resumable), not a
# parameter of the method.
RESUMABLE_SESSION_PARAMETER = "upload_id"
# Routes of the stand-in that are not Drive's API, by name.
NOT_DRIVE_API = re.compile(
    r"^/(_admin/.*|token|drive/folders/[^/]+|file/d/[^/]+/(view|download))?$")
# What the stand-in answers and Google's document does not have, each with why it is tolerated.
# Credflow never sends these (the dynamic check would fail if it did); the test fails when the
# stand-in stops answering one, so that this list cannot outlive the divergence.
KNOWN_STAND_IN_EXTRAS: dict[tuple[str, str], str] = {}


@cache
def discovery() -> dict:
    return json.loads(DISCOVERY_PATH.read_text())


def drive_methods() -> dict[str, dict]:
    """Every method of the resources credflow calls, by qualified name (`files.list`,
    `changes.getStartPageToken`)."""
    return {f"{resource}.{name}": method
            for resource in DRIVE_COLLECTIONS.values()
            for name, method in discovery()["resources"][resource]["methods"].items()}


def schema(name_or_schema: str | dict) -> dict:
    """A schema by name, or the schema itself with its `$ref` followed."""
    found = discovery()["schemas"][name_or_schema] if isinstance(name_or_schema, str) \
        else name_or_schema
    while "$ref" in found:
        found = discovery()["schemas"][found["$ref"]]
    return found


# --- field selectors (`fields=`), parsed independently of the stand-in's own parser -----------


def parse_fields(text: str) -> dict[str, dict | None]:
    """`nextPageToken,files(id,appProperties/x)` → {"nextPageToken": None, "files": {...}}."""
    tree, position = _field_list(text, 0)
    if position != len(text):
        raise ValueError(f"cannot parse fields {text!r} at {position}")
    return tree


def _field_list(text: str, position: int) -> tuple[dict, int]:
    tree: dict[str, dict | None] = {}
    while True:
        match = re.compile(r"\s*([^,()/\s]+(?:/[^,()/\s]+)*)\s*").match(text, position)
        if not match:
            raise ValueError(f"cannot parse fields {text!r} at {position}")
        path, position = match.group(1).split("/"), match.end()
        sub = None
        if position < len(text) and text[position] == "(":
            sub, position = _field_list(text, position + 1)
            if position >= len(text) or text[position] != ")":
                raise ValueError(f"unbalanced parentheses in fields {text!r}")
            position += 1
        for name in reversed(path[1:]):
            sub = {name: sub}
        node = tree.setdefault(path[0], sub)
        if node is not None and sub is not None and node is not sub:
            node.update(sub)
        elif sub is None:
            tree[path[0]] = None
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        return tree, position


def fields_not_in_schema(tree: dict, in_schema: dict, path: str = "") -> list[str]:
    """Every selected field path the schema does not have (or marks deprecated)."""
    problems = []
    current = schema(in_schema)
    if current.get("type") == "array":
        current = schema(current["items"])
    for name, sub in tree.items():
        if name == "*":
            continue
        where = f"{path}{name}"
        if name in current.get("properties", {}):
            child = current["properties"][name]
            if child.get("deprecated"):
                problems.append(f"{where} (deprecated)")
        elif "additionalProperties" in current:
            child = current["additionalProperties"]  # a map: any key is a field path
        else:
            problems.append(where)
            continue
        if sub:
            problems += fields_not_in_schema(sub, child, f"{where}/")
    return problems


# --- JSON answers against schemas --------------------------------------------------------------


_JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def answer_not_in_schema(value: Any, in_schema: dict, path: str = "") -> list[str]:
    """Every key of `value` (recursively, as `files[0].appProperties`) the schema does not
    have, and every value whose JSON type is not the schema's (int64 fields are strings in
    Drive's JSON)."""
    current = schema(in_schema)
    expected = current.get("type")
    if expected == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = expected not in _JSON_TYPES or isinstance(value, _JSON_TYPES[expected])
    if not ok:
        return [f"{path or '(the answer)'}: {type(value).__name__}, Google says {expected}"]
    problems = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key in current.get("properties", {}):
                child = current["properties"][key]
            elif "additionalProperties" in current:
                child = current["additionalProperties"]
            else:
                problems.append(f"{where}: no such field")
                continue
            problems += answer_not_in_schema(item, child, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += answer_not_in_schema(item, current["items"], f"{path}[{index}]")
    return problems


def error_not_google_shaped(body: Any) -> list[str]:
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return [f"not {{'error': {{…}}}}: {body!r:.200}"]
    problems = [f"error.{key}" for key in set(body["error"]) - GOOGLE_ERROR_KEYS]
    for detail in body["error"].get("errors", []):
        problems += [f"error.errors[].{key}" for key in set(detail) - GOOGLE_ERROR_DETAIL_KEYS]
    return problems


# --- credflow's side, statically ---------------------------------------------------------------


def _dict_keys_built(function: ast.FunctionDef, variable: str) -> set[str]:
    """The string keys a function puts in the dict `variable` (a literal, then `v["k"] = …`)."""
    keys: set[str] = set()
    for node in ast.walk(function):
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and target.id == variable and isinstance(
                    value, ast.Dict):
                keys |= {key.value for key in value.keys if isinstance(key, ast.Constant)}
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                    and target.value.id == variable and isinstance(target.slice, ast.Constant):
                keys.add(target.slice.value)
    return keys


def credflow_drive_calls() -> list[dict]:
    """Every `self._files().<method>(…)` and `self._changes().<method>(…)` in
    resources/drive.py: the method (qualified, `files.list`), the keyword
    parameters it passes (`**kwargs` resolved to the keys the function builds) and the keys of
    the `body` it sends."""
    tree = ast.parse(DRIVE_RESOURCE.read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    calls = []
    for function in functions:
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if not (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute)
                    and owner.func.attr in DRIVE_COLLECTIONS):
                continue
            resource = DRIVE_COLLECTIONS[owner.func.attr]
            keywords = {keyword.arg for keyword in node.keywords if keyword.arg}
            for keyword in node.keywords:
                if keyword.arg is None and isinstance(keyword.value, ast.Name):
                    keywords |= _dict_keys_built(function, keyword.value.id)
            body = _dict_keys_built(function, "body") if "body" in keywords else set()
            calls.append({"method": f"{resource}.{node.func.attr}", "keywords": keywords,
                          "body": body,
                          "where": f"resources/drive.py:{node.lineno} ({function.name})"})
    return calls


def test_credflow_reaches_drive_only_through_the_drive_resource():
    """So that the calls checked below are all the Drive calls credflow makes."""
    elsewhere = [
        str(path.relative_to(REPO)) for path in (REPO / "credflow_assets").rglob("*.py")
        if path != DRIVE_RESOURCE and "drive_server" not in path.parts
        and re.search(r"^\s*(from|import) googleapiclient", path.read_text(), re.MULTILINE)]
    assert elsewhere == []


def test_credflow_calls_only_drive_methods_and_parameters_google_documents():
    calls = credflow_drive_calls()
    assert {call["method"] for call in calls} >= {
        "files.list", "files.get", "files.create", "files.update", "files.delete",
        "changes.getStartPageToken", "changes.list"}
    methods, file_properties = drive_methods(), schema("File")["properties"]
    problems = []
    for call in calls:
        name = MEDIA_DOWNLOAD_VARIANTS.get(call["method"], call["method"])
        method = methods.get(name)
        if method is None:
            problems.append(f"{call['where']}: {call['method']} is not a Drive v3 method")
            continue
        if call["method"] in MEDIA_DOWNLOAD_VARIANTS and not method.get("supportsMediaDownload"):
            problems.append(f"{call['where']}: {name} does not support media download")
        # The standard parameters (`fields`, `alt`, …) go with every method.
        allowed = set(method.get("parameters", {})) | set(discovery()["parameters"])
        if "request" in method:
            allowed |= CLIENT_BODY_ARGUMENTS
        if method.get("supportsMediaUpload"):
            allowed |= CLIENT_MEDIA_ARGUMENTS
        for keyword in sorted(call["keywords"]):
            if keyword not in allowed:
                problems.append(f"{call['where']}: {name} has no parameter {keyword}")
            elif method.get("parameters", {}).get(keyword, {}).get("deprecated"):
                problems.append(f"{call['where']}: {name}'s {keyword} is deprecated")
        for key in sorted(call["body"]):
            if key not in file_properties:
                problems.append(f"{call['where']}: the File resource has no {key}")
            elif file_properties[key].get("deprecated"):
                problems.append(f"{call['where']}: File.{key} is deprecated")
    assert not problems, "not in Google's Drive v3 discovery document:\n" + "\n".join(problems)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


_DRIVE_CALLER = re.compile(r"DriveResource|googleapiclient|\bdrive\.|\.files\(\)")


def credflow_field_selectors() -> list[tuple[str, str, str]]:
    """(selector, schema it selects from, where) for every `fields` credflow requests.

    A `fields=` argument or a `fields` parameter default anywhere in credflow_assets/ (the
    stand-in excluded), its value evaluated in its module (constants, `mpf.ITEM_FIELDS`…). An
    f-string (`nextPageToken,files({fields})`) is checked with `id` for its placeholder: the
    per-file selectors that fill it are collected on their own. Passed straight on (`fields=
    fields`), it is the caller's selector, checked where the caller writes it.
    """
    import importlib

    found = []
    for path in sorted((REPO / "credflow_assets").rglob("*.py")):
        if "drive_server" in path.parts:
            continue
        source = path.read_text()
        # Only modules that talk to Drive: `fields=` elsewhere is another API's word (pandera's,
        # a CSV error's field count).
        if "fields" not in source or not _DRIVE_CALLER.search(source):
            continue
        tree = ast.parse(source)
        module = None
        expressions: list[tuple[ast.expr, str, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
                    node.func, "id", "")
                owner = getattr(node.func, "value", None)
                if callee == "list" and isinstance(owner, ast.Call) and getattr(
                        owner.func, "attr", "") == "_changes":
                    callee = "changes.list"
                for keyword in node.keywords:
                    if keyword.arg == "fields":
                        expressions.append((keyword.value, callee, node.lineno))
            elif isinstance(node, ast.Dict):  # request arguments built as a dict first
                expressions += [(value, "", node.lineno) for key, value in
                                zip(node.keys, node.values)
                                if isinstance(key, ast.Constant) and key.value == "fields"]
            elif isinstance(node, ast.FunctionDef):
                arguments = node.args.args[len(node.args.args) - len(node.args.defaults):]
                for argument, default in zip(arguments, node.args.defaults):
                    if argument.arg == "fields":
                        expressions.append((default, node.name, node.lineno))
        for expression, callee, line in expressions:
            where = f"{path.relative_to(REPO)}:{line}"
            selects_from = SELECTS_FROM.get(callee, "File")
            if isinstance(expression, ast.Name) and expression.id == "fields":
                continue
            if isinstance(expression, ast.JoinedStr):
                placeholder = "fileId" if selects_from == "ChangeList" else "id"
                text = "".join(part.value if isinstance(part, ast.Constant) else placeholder
                               for part in expression.values)
            elif isinstance(expression, ast.Constant):
                text = expression.value
            else:
                module = module or importlib.import_module(_module_name(path))
                text = eval(compile(ast.Expression(expression), where, "eval"),
                            vars(module))
            found.append((text, selects_from, where))
    return found


# What a `fields` selector selects from, by the call it is given to (by default, a File):
# files().list's and changes().list's lists, and the per-change selectors DriveResource's
# changes methods take.
SELECTS_FROM = {"list": "FileList", "changes.list": "ChangeList", "change_pages": "Change",
                "list_changes": "Change"}


def test_every_fields_selector_credflow_requests_is_in_googles_schema():
    selectors = credflow_field_selectors()
    assert any(where.startswith("credflow_assets/therapists/") for _, _, where in selectors)
    assert {"ChangeList", "Change"} <= {selects_from for _, selects_from, _ in selectors}
    problems = []
    for text, selects_from, where in selectors:
        for field in fields_not_in_schema(parse_fields(text), selects_from):
            problems.append(f"{where}: fields={text!r}: {selects_from} has no {field}")
    assert not problems, "not in Google's Drive v3 discovery document:\n" + "\n".join(problems)


def _documented_order_keys() -> set[str]:
    """The sort keys files.list's `orderBy` description lists (as `key`)."""
    description = drive_methods()["files.list"]["parameters"]["orderBy"]["description"]
    return set(re.findall(r"\* `([A-Za-z_]+)`", description))


def test_every_sort_key_credflow_uses_is_documented():
    documented = _documented_order_keys()
    assert {"createdTime", "modifiedTime", "name"} <= documented  # the description still parses
    used = []
    for path in sorted((REPO / "credflow_assets").rglob("*.py")):
        if "drive_server" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("order_by", "orderBy") and \
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                used += [(item.split()[0], f"{path.relative_to(REPO)}:{node.value.lineno}")
                         for item in node.value.value.split(",") if item.strip()]
    assert used
    unknown = [f"{where}: orderBy key {key!r}" for key, where in used if key not in documented]
    assert not unknown, "not in Google's Drive v3 discovery document:\n" + "\n".join(unknown)


# --- the stand-in's side, statically ------------------------------------------------------------


def _route_templates() -> dict[tuple[str, str], str]:
    """{(HTTP method, path under the root URL): Drive method} for every method of the files
    and changes resources: its REST path under `servicePath`, and its media upload paths."""
    root = discovery()["servicePath"]  # "drive/v3/"
    templates = {}
    for name, method in drive_methods().items():
        templates[(method["httpMethod"], root + method["path"])] = name
        for protocol in method.get("mediaUpload", {}).get("protocols", {}).values():
            templates[(method["httpMethod"], protocol["path"].lstrip("/"))] = name
    return templates


def _matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


def _sample_path(pattern: re.Pattern) -> str:
    """A concrete path the route pattern matches (`([^/]+)` → an id; optional groups left out)."""
    text = re.sub(r"\(\?:[^)]*\)\?", "", pattern.pattern)
    return text.replace("([^/]+)", "FILE_ID").lstrip("/")


def test_the_stand_in_answers_only_routes_google_documents():
    from credflow_assets.local.drive_server.routes import ROUTES

    templates = _route_templates()
    extras, problems = set(), []
    for methods, pattern, handler in ROUTES:
        path = _sample_path(pattern)
        for method in methods:
            if method == "PUT" and handler == "upload_chunk":
                continue  # the resumable session URI, checked in the dynamic session
            if any(m == method and _matches(t, path) for (m, t) in templates):
                continue
            key = (method, path.removeprefix(discovery()["servicePath"]))
            if key in KNOWN_STAND_IN_EXTRAS:
                extras.add(key)
            else:
                problems.append(f"{method} /{path} ({handler})")
    assert not problems, "routes of the stand-in Google does not document:\n" + "\n".join(
        problems)
    assert extras == set(KNOWN_STAND_IN_EXTRAS), (
        "the stand-in no longer answers a route KNOWN_STAND_IN_EXTRAS tolerates; drop it from "
        f"the list: {set(KNOWN_STAND_IN_EXTRAS) - extras}")


def _current(found: dict) -> set[str]:
    """A schema's properties, less the deprecated ones."""
    return {name for name, value in found["properties"].items() if not value.get("deprecated")}


def test_the_fields_the_stand_in_knows_are_googles():
    from credflow_assets.local.drive_server import changes, query, responses, validation

    file_properties = set(schema("File")["properties"])
    list_properties = set(schema("FileList")["properties"])
    problems = [f"File.{name} (selectable)" for name in query.FILE_FIELDS - file_properties]
    problems += [f"FileList.{name} (selectable)"
                 for name in query.FILE_LIST_FIELDS - list_properties]
    problems += [f"File.{name} (default answer)"
                 for name in set(responses.DEFAULT_FILE_FIELDS) - file_properties]
    problems += [f"FileList.{name} (default answer)"
                 for name in set(responses.DEFAULT_LIST_FIELDS) - list_properties]
    writable = validation._WRITABLE | validation._WRITABLE_ON_DRIVE_ONLY
    problems += [f"File.{name} (writable)" for name in writable - file_properties]
    problems += [f"ChangeList.{name} (selectable)"
                 for name in changes.CHANGE_LIST_FIELDS - set(schema("ChangeList")["properties"])]
    problems += [f"Change.{name} (selectable)"
                 for name in changes.CHANGE_FIELDS - _current(schema("Change"))]
    problems += [f"StartPageToken.{name} (selectable)" for name in
                 changes.START_PAGE_TOKEN_FIELDS - set(schema("StartPageToken")["properties"])]
    defaults = changes.DEFAULT_CHANGE_LIST_FIELDS
    problems += [f"ChangeList.{name} (default answer)" for name in
                 set(defaults) - set(schema("ChangeList")["properties"])]
    problems += [f"Change.{name} (default answer)" for name in
                 set(defaults["changes"]) - _current(schema("Change"))]
    problems += [f"orderBy {key}" for key in
                 set(query._ORDER_KEYS) | query._UNSUPPORTED_ORDER_KEYS
                 if key not in _documented_order_keys()]
    assert not problems, "the stand-in knows what Google does not document:\n" + "\n".join(
        sorted(problems))


# --- a real session, recorded --------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.exchanges: list[dict] = []
        self._lock = threading.Lock()

    def handler_class(self):
        from credflow_assets.local.drive_server.server import Handler

        recorder = self

        class RecordingHandler(Handler):
            """The stand-in's own handler, noting each request and each JSON answer."""

            def _dispatch(self, method: str) -> None:
                url = urlsplit(self.path)
                self._exchange = {"method": method, "path": unquote(url.path),
                                  "params": dict(parse_qsl(url.query, keep_blank_values=True)),
                                  "override": self.headers.get("X-HTTP-Method-Override"),
                                  "answers": []}
                with recorder._lock:
                    recorder.exchanges.append(self._exchange)
                super()._dispatch(method)

            def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
                self._exchange["answers"].append((status, body))
                super()._send_json(status, body, headers)

        return RecordingHandler


@pytest.fixture(scope="module")
def recorded_session(tmp_path_factory):
    """The stand-in, in-process with a recording handler, and a DriveResource session against
    it exercising every Drive call credflow makes (and a miss, for an error answer)."""
    from credflow_assets.local.drive_server.convert import SPREADSHEET_MIME
    from credflow_assets.local.drive_server.server import DriveServer
    from credflow_assets.local.drive_server.store import Store
    from credflow_assets.resources.drive import DOCUMENT_MIME, DriveError, DriveResource

    work = tmp_path_factory.mktemp("drive_conformance")
    token = secrets.token_hex(16)
    store = Store(work / "state")
    server = DriveServer(0, store, token)
    recorder = _Recorder()
    server.RequestHandlerClass = recorder.handler_class()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        drive = DriveResource(api_url=f"http://127.0.0.1:{server.server_address[1]}/",
                              token=token, num_retries=0)
        chunk = 256 * 1024
        small, big, text, csv = (work / name for name in (
            "small.pdf", "big.bin", "notes.txt", "rows.csv"))
        small.write_bytes(b"%PDF-1.4\n" + b"x" * 1000)
        big.write_bytes(secrets.token_bytes(2 * chunk + 1000))  # three resumable chunks
        text.write_text("Notes\nline two\n")
        csv.write_text("id,name\n1,Ann\n")

        start_token = drive.start_page_token()
        folder_id = drive.generate_ids(1)[0]
        root = drive.create_folder("Conformance", None, app_properties={"k": "root"},
                                   folder_id=folder_id)
        inbox = drive.create_folder("Inbox", root["id"], app_properties={"k": "inbox"})
        placed = drive.upload_file(small, "small.pdf", root["id"], mime_type="application/pdf",
                                   app_properties={"credflow_s3_key": "t-1/small.pdf"})
        drive.upload_file(big, "big.bin", root["id"], mime_type="application/octet-stream",
                          chunk_size=chunk)
        document = drive.upload_file(text, "notes", root["id"], mime_type="text/plain",
                                     convert_to=DOCUMENT_MIME)
        sheet = drive.upload_file(csv, "rows", inbox["id"], mime_type="text/csv",
                                  convert_to=SPREADSHEET_MIME)
        listed = list(drive.list_files(f"'{root['id']}' in parents and trashed = false",
                                       order_by="createdTime", page_size=1))
        assert len(listed) == 4  # four pages of one: pageToken went round
        assert drive.find_children_by_app_property(root["id"], "k", "inbox",
                                                   mime_type="application/vnd.google-apps.folder")
        drive.get_file(placed["id"])
        assert drive.find_file("no-such-file") is None  # a 404, in Google's error shape
        drive.update_file(placed["id"], name="renamed.pdf", app_properties={"x": "1", "k": None},
                          add_parents=inbox["id"], remove_parents=root["id"])
        drive.update_file(placed["id"], local_path=small, mime_type="application/pdf")
        drive.update_file(placed["id"], local_path=big, chunk_size=chunk)
        drive.download_file(placed["id"], work / "back.bin", chunk_size=chunk)
        drive.export_file(document["id"], "text/plain")
        drive.export_file(sheet["id"], "text/csv")
        drive.delete_file(document["id"])
        with pytest.raises(DriveError):
            drive.get_file(document["id"])
        pages = list(drive.change_pages(start_token, page_size=3))  # removed one included
        assert len(pages) >= 2 and pages[-1].new_start_token
        assert any(change["removed"] for page in pages for change in page.changes)
        assert drive.list_changes(pages[-1].new_start_token) == ([], pages[-1].new_start_token)
        with pytest.raises(DriveError):  # Drive's 400 for a token it never issued
            drive.list_changes("not-a-token")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        store.close()
    return recorder.exchanges


def _drive_method_of(method: str, path: str) -> str | None:
    """The Drive method answering `method path`; a literal path (`files/generateIds`) wins over
    a template it also matches (`files/{fileId}`)."""
    by_specificity = sorted(_route_templates().items(), key=lambda item: item[0][1].count("{"))
    for (template_method, template), name in by_specificity:
        if template_method == method and _matches(template, path.lstrip("/")):
            return name
    return None


def test_the_session_used_every_drive_method_credflow_calls(recorded_session):
    used = {_drive_method_of(e["method"], e["path"]) for e in recorded_session
            if e["method"] != "PUT"}
    called = {MEDIA_DOWNLOAD_VARIANTS.get(c["method"], c["method"])
              for c in credflow_drive_calls()}
    assert called - used == set(), "add these calls to the recorded session"
    assert any(e["params"].get("uploadType") == "resumable" for e in recorded_session)
    assert any(e["method"] == "PUT" for e in recorded_session)
    assert any(e["params"].get("alt") == "media" for e in recorded_session)
    assert any(e["params"].get("pageToken") for e in recorded_session)


def test_every_request_the_stand_in_received_is_googles(recorded_session):
    top_level = set(discovery()["parameters"])
    problems = []
    for exchange in recorded_session:
        method, path, params = exchange["method"], exchange["path"], exchange["params"]
        if NOT_DRIVE_API.match(path):
            continue
        shown = f"{method} {path}"
        name = _drive_method_of(method, path)
        session = method == "PUT" and RESUMABLE_SESSION_PARAMETER in params
        if session:  # a chunk to the session URI: the initiating request's method applies
            name = _drive_method_of("POST", path) or _drive_method_of("PATCH", path)
        if name is None:
            problems.append(f"{shown}: no Drive v3 method")
            continue
        if exchange["override"]:
            problems.append(f"{shown}: X-HTTP-Method-Override {exchange['override']}")
        documented = drive_methods()[name].get("parameters", {})
        for param in sorted(params):
            if session and param == RESUMABLE_SESSION_PARAMETER:
                continue
            if param not in documented and param not in top_level:
                problems.append(f"{shown}: {name} has no parameter {param}")
            elif documented.get(param, {}).get("deprecated"):
                problems.append(f"{shown}: {name}'s {param} is deprecated")
    assert not problems, "not in Google's Drive v3 discovery document:\n" + "\n".join(problems)


def test_every_answer_of_the_stand_in_is_in_googles_schema(recorded_session):
    problems, answers = [], 0
    for exchange in recorded_session:
        method, path = exchange["method"], exchange["path"]
        if NOT_DRIVE_API.match(path):
            continue
        name = _drive_method_of(method, path) or (
            _drive_method_of("POST", path) or _drive_method_of("PATCH", path))
        response = drive_methods().get(name, {}).get("response")
        for status, body in exchange["answers"]:
            answers += 1
            shown = f"{method} {path} → {status}"
            if status >= 400:
                problems += [f"{shown}: {p}" for p in error_not_google_shaped(body)]
            elif response is None:
                problems.append(f"{shown}: {name} answers no JSON on Google")
            else:
                problems += [f"{shown}: {response['$ref']} {p}"
                             for p in answer_not_in_schema(body, response)]
    assert answers > 10
    assert not problems, "answered, but not in Google's Drive v3 discovery document:\n" + \
        "\n".join(dict.fromkeys(problems))


def test_the_checks_catch_what_google_does_not_have():
    """The checkers themselves: a made-up field, parameter or answer key is reported."""
    assert fields_not_in_schema(parse_fields("nextPageToken,files(id,colour)"), "FileList") == [
        "files/colour"]
    assert fields_not_in_schema(parse_fields("appProperties/any_key,teamDriveId"), "File") == [
        "teamDriveId (deprecated)"]
    assert answer_not_in_schema({"id": "x", "size": 12, "shiny": True}, {"$ref": "File"}) == [
        "size: int, Google says string", "shiny: no such field"]
    assert error_not_google_shaped({"error": {"code": 404, "message": "m", "errors": [
        {"reason": "notFound", "hint": "h"}]}}) == ["error.errors[].hint"]


def test_last_modifying_user_is_who_made_the_latest_change_as_drive_shapes_it(tmp_path):
    """Drive records who made each change: `lastModifyingUser` is the User resource of the
    latest one, `me` true only when the asker is that user. The stand-in's request user comes
    from its token; `POST /_admin/users` mints one acting as a named person."""
    import urllib.request

    from credflow_assets.local.drive_server.server import DriveServer
    from credflow_assets.local.drive_server.store import Store
    from credflow_assets.resources.drive import DriveResource

    token = secrets.token_hex(16)
    store = Store(tmp_path / "state")
    server = DriveServer(0, store, token)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        request = urllib.request.Request(
            url + "_admin/users", method="POST",
            data=json.dumps({"user": "Fay Analyst <fay@example.org>"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            minted = json.loads(response.read())
        fay = DriveResource(api_url=url, token=minted["access_token"], num_retries=0)
        owner = DriveResource(api_url=url, token=token, num_retries=0)
        source = tmp_path / "rows.csv"
        source.write_text("id\n1\n")
        fields = "id,lastModifyingUser"

        uploaded = fay.upload_file(source, "rows.csv", "root", mime_type="text/csv")
        as_fay = fay.get_file(uploaded["id"], fields)["lastModifyingUser"]
        as_owner = owner.get_file(uploaded["id"], fields)["lastModifyingUser"]
        assert as_fay == {"kind": "drive#user", "displayName": "Fay Analyst",
                          "emailAddress": "fay@example.org", "me": True,
                          "permissionId": as_fay["permissionId"]}
        assert as_fay["permissionId"].isdigit()
        assert as_owner == {**as_fay, "me": False}
        assert answer_not_in_schema(as_fay, {"$ref": "User"}) == []
        # A partial selection, as the feeds sensor lists it.
        [listed] = owner.list_files("name = 'rows.csv'",
                                    fields="id,lastModifyingUser(emailAddress,displayName)")
        assert listed["lastModifyingUser"] == {"emailAddress": "fay@example.org",
                                               "displayName": "Fay Analyst"}
        # The next change is someone else's.
        owner.update_file(uploaded["id"], name="renamed.csv")
        after = fay.get_file(uploaded["id"], fields)["lastModifyingUser"]
        assert after["emailAddress"] != "fay@example.org" and after["me"] is False
        # The minted token opens the API, not the admin routes.
        refused = urllib.request.Request(url + "_admin/health", headers={
            "Authorization": f"Bearer {minted['access_token']}"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(refused, timeout=10)
        assert error.value.code == 401
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        store.close()
