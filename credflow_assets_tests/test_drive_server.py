"""The local Drive server over raw HTTP: protocol details, error shapes, semantics."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode, urlsplit

import pytest

from credflow_assets.local.drive_server import fault_state, reset, set_faults, start
from credflow_assets.local.drive_server.query import compile_q, name_contains, parse_q
from credflow_assets.local.drive_server.store import Store
from credflow_assets.local.process import ServiceStartError, stop_pid

FOLDER = "application/vnd.google-apps.folder"
DOC = "application/vnd.google-apps.document"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = secrets.token_hex(16)
    info = start(tmp_path_factory.mktemp("drive_home"), token=token)
    yield {**info, "token": token}
    stop_pid(info["pid"])


class Client:
    """Raw HTTP against the server: (status, headers, body) with no client-side magic."""

    def __init__(self, server: dict) -> None:
        self.port, self.token, self.url = server["port"], server["token"], server["url"]

    def request(self, method, path, *, params=None, body=None, headers=None, token=...):
        token = self.token if token is ... else token
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def json(self, method, path, expect=200, **kwargs):
        status, _headers, body = self.request(method, path, **kwargs)
        assert status == expect, body
        return json.loads(body) if body else None

    def folder(self, name, parent="root", **extra):
        body = {"name": name, "mimeType": FOLDER, "parents": [parent], **extra}
        return self.json("POST", "/drive/v3/files", body=body, params={"fields": "*"})

    def multipart(self, meta, data, content_type, path="/upload/drive/v3/files", method="POST",
                  expect=200, params=None):
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{json.dumps(meta)}\r\n"
            f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.json(
            method, path, expect=expect, body=body,
            params={"uploadType": "multipart", "fields": "*", **(params or {})},
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
        )

    def list(self, q, **params):
        return self.json("GET", "/drive/v3/files", params={"q": q, **params})


@pytest.fixture
def client(server):
    return Client(server)


@pytest.fixture
def top(client):
    """A fresh folder per test, so tests never see each other's files."""
    return client.folder(f"test-{uuid.uuid4().hex[:8]}")


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) >= {"code", "message", "errors"}
    return error


# -- auth and error shapes --------------------------------------------------------------------

def test_missing_or_wrong_token_is_401_in_drive_shape(client):
    for token in (None, "wrong"):
        status, headers, body = client.request("GET", "/drive/v3/files", token=token)
        assert status == 401
        error = error_of(body)
        assert error["code"] == 401 and error["errors"][0]["reason"] == "authError"
        assert error["errors"][0]["locationType"] == "header"
        assert "WWW-Authenticate" in headers
    status, _, _ = client.request("POST", "/_admin/faults", body={"fail_next": 1}, token=None)
    assert status == 401


def test_unknown_file_is_404_not_found(client):
    status, _, body = client.request("GET", "/drive/v3/files/nope123")
    assert status == 404
    assert error_of(body) == {
        "code": 404,
        "message": "File not found: nope123.",
        "errors": [{"domain": "global", "reason": "notFound", "message": "File not found: nope123.",
                    "location": "fileId", "locationType": "parameter"}],
    }


@pytest.mark.parametrize(
    "q, problem",
    [
        ("fullText contains 'x'", "'fullText' is not supported"),
        ("colour = 'red'", "unknown query term 'colour'"),
        ("name = 'a\\nb'", "unsupported escape sequence"),
        ("name = 'open", "unterminated string"),
        ("name = true", "'name' needs a quoted string"),
        ("trashed = 'false'", "'trashed' needs true or false"),
        ("name > 'a'", "operator '>' is not valid for 'name'"),
        ("appProperties has { key='k' }", "expected 'and'"),
        ("appProperties has { key='k' and key='v' }", "expected 'key' or 'value'"),
        ("name = 'a' name = 'b'", "unexpected 'name'"),
        ("(name = 'a'", "expected ')'"),
        ("'x' in owners", "'owners' is not supported"),
        ("modifiedTime > 'yesterday'", "not an RFC 3339 timestamp"),
        ("name = 'a' and", "expected a query term"),
    ],
)
def test_unknown_or_bad_clauses_are_400_invalid_naming_the_problem(client, q, problem):
    status, _, body = client.request("GET", "/drive/v3/files", params={"q": q})
    assert status == 400
    error = error_of(body)
    assert error["errors"][0]["reason"] == "invalid"
    assert error["errors"][0]["location"] == "q"
    assert problem in error["message"]


# -- q semantics ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, query, matches",
    [
        ("Lambert, Nicholas", "Lamb", True),
        ("Lamb, Nicholas", "nicholas", True),
        ("HelloWorld", "World", False),
        ("HelloWorld", "hello", True),
        ("Lambert, Nicholas", "lamb nich", True),
        ("Lamb, Nicholas", "lamb nich", True),
        ("Lamb, Nicholas", "lamb zed", False),
        ("report_2024-final.pdf", "2024 fin", True),
        ("O'Brien, Ann", "brien", True),
        ("abc", "bc", False),
    ],
)
def test_name_contains_is_a_case_insensitive_token_prefix_match(name, query, matches):
    assert name_contains(name, query) is matches


def test_queries_filter_like_drive(client, top):
    parent = top["id"]
    names = ["Lambert, Nicholas", "Lamb, Nicholas", "HelloWorld", "O'Brien, Ann"]
    made = {n: client.folder(n, parent) for n in names}
    doc = client.multipart({"name": "Notes", "parents": [parent], "mimeType": DOC}, b"hi",
                           "text/plain")
    scope = f"'{parent}' in parents and "

    def found(q):
        return sorted(f["name"] for f in client.list(scope + q, pageSize=1000)["files"])

    assert found("name contains 'lamb nich'") == ["Lamb, Nicholas", "Lambert, Nicholas"]
    assert found("name contains 'World'") == []
    assert found("name = 'Lamb, Nicholas'") == ["Lamb, Nicholas"]
    assert found("name = 'lamb, nicholas'") == []
    assert found("name = 'O\\'Brien, Ann'") == ["O'Brien, Ann"]
    assert found(f"mimeType != '{FOLDER}'") == ["Notes"]
    assert found("not name contains 'lamb' and mimeType = '" + FOLDER + "'") == [
        "HelloWorld", "O'Brien, Ann"]
    assert found("(name = 'HelloWorld' or name = 'Notes') and trashed = false") == [
        "HelloWorld", "Notes"]
    created = made["HelloWorld"]["createdTime"]
    assert found(f"createdTime > '{created}'") == ["Notes", "O'Brien, Ann"]
    assert found(f"createdTime <= '{created}'") == ["HelloWorld", "Lamb, Nicholas",
                                                    "Lambert, Nicholas"]
    assert doc["mimeType"] == DOC


def test_app_properties_has_needs_key_and_value_and_trashed_files_are_listed(client, top):
    parent = top["id"]
    a = client.folder("a", parent, appProperties={"credflow_id": "42"})
    client.folder("b", parent, appProperties={"credflow_id": "43"})
    client.folder("c", parent, properties={"credflow_id": "42"})
    q = f"'{parent}' in parents and appProperties has {{ value='42' and key='credflow_id' }}"
    assert [f["id"] for f in client.list(q)["files"]] == [a["id"]]
    public = f"'{parent}' in parents and properties has {{ key='credflow_id' and value='42' }}"
    assert [f["name"] for f in client.list(public)["files"]] == ["c"]
    client.json("PATCH", f"/drive/v3/files/{a['id']}", body={"trashed": True})
    assert [f["id"] for f in client.list(q)["files"]] == [a["id"]]  # trashed still listed
    assert client.list(q + " and trashed = false")["files"] == []


def test_parent_queries_use_an_index(tmp_path):
    store = Store(tmp_path)
    try:
        q = "'abc' in parents and trashed = false and appProperties has { key='k' and value='v' }"
        where, params = compile_q(parse_q(q), root_id=store.root_id)
        plan = store.query_plan(where, params)
        assert "SEARCH parents USING PRIMARY KEY" in plan
        assert "SCAN f" not in plan
    finally:
        store.close()


# -- fields, paging and ordering ----------------------------------------------------------------

def test_fields_work_like_drive(client, top):
    for n in range(3):
        client.folder(f"f{n}", top["id"], appProperties={"k": str(n), "other": "x"})
    q = f"'{top['id']}' in parents"
    default = client.list(q, pageSize=2)
    assert set(default) == {"kind", "incompleteSearch", "files", "nextPageToken"}
    assert set(default["files"][0]) == {"kind", "id", "name", "mimeType"}
    only_files = client.list(q, pageSize=2, fields="files(id,appProperties/k)")
    assert set(only_files) == {"files"}  # no nextPageToken unless asked for, as on Drive
    assert only_files["files"][0]["appProperties"] == {"k": "0"}
    everything = client.list(q, pageSize=1, fields="nextPageToken,files(*)")
    assert {"createdTime", "modifiedTime", "webViewLink", "version", "parents"} <= set(
        everything["files"][0])
    nested = client.json("GET", f"/drive/v3/files/{top['id']}", params={"fields": "id,parents"})
    assert set(nested) == {"id", "parents"}
    status, _, body = client.request("GET", f"/drive/v3/files/{top['id']}",
                                     params={"fields": "id,colour"})
    assert status == 400
    assert error_of(body)["errors"][0]["location"] == "fields"


def test_page_size_bounds_and_foreign_page_tokens(client, top):
    for n in range(3):
        client.folder(f"p{n}", top["id"])
    q = f"'{top['id']}' in parents"
    for size in ("0", "1001", "many"):
        status, _, body = client.request("GET", "/drive/v3/files", params={"q": q,
                                                                           "pageSize": size})
        assert status == 400 and error_of(body)["errors"][0]["location"] == "pageSize"
    token = client.list(q, pageSize=1)["nextPageToken"]
    status, _, body = client.request("GET", "/drive/v3/files",
                                     params={"q": "trashed = true", "pageToken": token})
    assert status == 400 and error_of(body)["errors"][0]["location"] == "pageToken"


def test_order_by(client, top):
    parent = top["id"]
    client.folder("b", parent)
    client.multipart({"name": "a", "parents": [parent]}, b"x", "text/plain")
    client.folder("C", parent)
    q = f"'{parent}' in parents"

    def names(order):
        return [f["name"] for f in client.list(q, orderBy=order)["files"]]

    assert names("createdTime") == ["b", "a", "C"]
    assert names("createdTime desc") == ["C", "a", "b"]
    assert names("name") == ["a", "b", "C"]
    assert names("name desc") == ["C", "b", "a"]
    assert names("folder,name") == ["b", "C", "a"]
    assert names("folder desc, modifiedTime desc") == ["a", "C", "b"]
    status, _, body = client.request("GET", "/drive/v3/files",
                                     params={"q": q, "orderBy": "recency"})
    assert status == 400 and error_of(body)["errors"][0]["location"] == "orderBy"


# -- file resources, content and conversion -------------------------------------------------------

def test_binary_file_resource_and_media_update(client, top):
    data = b"\x00\x01binary\r\n\n" * 100
    made = client.multipart({"name": "x.bin", "parents": [top["id"]]}, data,
                            "application/octet-stream")
    assert made["kind"] == "drive#file"
    assert made["size"] == str(len(data)) and made["md5Checksum"] == hashlib.md5(data).hexdigest()
    assert made["webViewLink"] == f"{client.url}file/d/{made['id']}/view"
    assert RFC3339_MS.match(made["createdTime"]) and made["version"] == "1"
    status, headers, body = client.request("GET", f"/drive/v3/files/{made['id']}",
                                           params={"alt": "media"})
    assert status == 200 and body == data
    status, headers, body = client.request("GET", f"/drive/v3/files/{made['id']}",
                                           params={"alt": "media"},
                                           headers={"Range": "bytes=2-7"})
    assert status == 206 and body == data[2:8]
    assert headers["Content-Range"] == f"bytes 2-7/{len(data)}"
    new = b"second revision"
    updated = client.json(
        "PATCH", f"/upload/drive/v3/files/{made['id']}", body=new,
        params={"uploadType": "media", "fields": "*"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert updated["md5Checksum"] == hashlib.md5(new).hexdigest()
    assert updated["headRevisionId"] != made["headRevisionId"]
    assert int(updated["version"]) > int(made["version"])
    assert updated["modifiedTime"] > made["modifiedTime"]
    assert updated["createdTime"] == made["createdTime"]


def test_times_are_rfc3339_ms_and_strictly_increasing(client, top):
    times = [client.folder(f"t{n}", top["id"])["createdTime"] for n in range(20)]
    assert all(RFC3339_MS.match(t) for t in times)
    assert times == sorted(set(times))


def test_google_docs_import_and_export(client, top):
    doc = client.multipart({"name": "Doc", "parents": [top["id"]], "mimeType": DOC},
                           b"<html><body><p>Hello</p><p>World &amp; all</p></body></html>",
                           "text/html")
    assert doc["mimeType"] == DOC
    assert not {"size", "md5Checksum", "headRevisionId"} & set(doc)
    status, _, body = client.request("GET", f"/drive/v3/files/{doc['id']}/export",
                                     params={"mimeType": "text/plain"})
    assert status == 200 and body == "\ufeffHello\r\nWorld & all".encode()
    status, _, body = client.request("GET", f"/drive/v3/files/{doc['id']}",
                                     params={"alt": "media"})
    assert status == 403
    assert error_of(body)["errors"][0]["reason"] == "fileNotDownloadable"
    status, _, body = client.request("GET", f"/drive/v3/files/{doc['id']}/export",
                                     params={"mimeType": "application/zip"})
    assert status == 400 and error_of(body)["errors"][0]["location"] == "convertTo"
    binary = client.multipart({"name": "b", "parents": [top["id"]]}, b"x", "text/plain")
    status, _, body = client.request("GET", f"/drive/v3/files/{binary['id']}/export",
                                     params={"mimeType": "text/plain"})
    assert status == 403 and error_of(body)["errors"][0]["reason"] == "fileNotExportable"


def test_pdf_export_is_a_well_formed_pdf(client, top):
    doc = client.multipart({"name": "Doc", "parents": [top["id"]], "mimeType": DOC},
                           "\n".join(f"line {n} (x)" for n in range(130)).encode(), "text/plain")
    status, headers, pdf = client.request("GET", f"/drive/v3/files/{doc['id']}/export",
                                          params={"mimeType": "application/pdf"})
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split()[0])
    assert pdf[xref:].startswith(b"xref")
    offsets = [int(line[:10]) for line in pdf[xref:].split(b"\n")[3:] if line.endswith(b" n ")]
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(b"%d 0 obj" % number)
    assert b"/Count 3" in pdf  # 130 lines, 60 a page


def test_unsupported_conversion_is_refused_like_drive(client, top):
    status, _, body = client.request(
        "POST", "/upload/drive/v3/files", params={"uploadType": "multipart"},
        body=b"--b\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps({"name": "z", "parents": [top["id"]], "mimeType": DOC}).encode()
        + b"\r\n--b\r\nContent-Type: application/zip\r\n\r\nPK\r\n--b--",
        headers={"Content-Type": "multipart/related; boundary=b"},
    )
    assert status == 400
    assert error_of(body)["errors"][0]["reason"] == "conversionUnsupportedConversionPath"


def test_app_properties_are_limited_to_124_bytes_and_merge_on_update(client, top):
    ok = client.folder("ok", top["id"], appProperties={"k": "v" * 123, "keep": "1"})
    assert ok["appProperties"]["k"] == "v" * 123
    status, _, body = client.request(
        "POST", "/drive/v3/files",
        body={"name": "big", "parents": [top["id"]], "appProperties": {"k": "v" * 124}},
    )
    assert status == 403
    assert error_of(body)["errors"][0]["reason"] == "propertyLengthLimitExceeded"
    merged = client.json("PATCH", f"/drive/v3/files/{ok['id']}", params={"fields": "*"},
                         body={"appProperties": {"k": None, "new": "2"}})
    assert merged["appProperties"] == {"keep": "1", "new": "2"}


def test_single_parent_rules_and_cycles(client, top):
    a, b = client.folder("a", top["id"]), client.folder("b", top["id"])
    child = client.folder("child", a["id"])
    status, _, body = client.request("PATCH", f"/drive/v3/files/{child['id']}", body={},
                                     params={"addParents": b["id"]})
    assert status == 403 and error_of(body)["errors"][0]["reason"] == "cannotAddParent"
    moved = client.json("PATCH", f"/drive/v3/files/{child['id']}", body={},
                        params={"addParents": b["id"], "removeParents": a["id"],
                                "fields": "parents"})
    assert moved == {"parents": [b["id"]]}
    status, _, body = client.request("PATCH", f"/drive/v3/files/{b['id']}", body={},
                                     params={"addParents": child["id"],
                                             "removeParents": top["id"]})
    assert status == 400 and "cycle" in error_of(body)["message"]
    status, _, body = client.request("PATCH", f"/drive/v3/files/{child['id']}",
                                     body={"parents": [a["id"]]})
    assert status == 403 and error_of(body)["errors"][0]["reason"] == "fieldNotWritable"
    status, _, body = client.request("POST", "/drive/v3/files",
                                     body={"name": "x", "parents": ["missing-folder-id"]})
    assert status == 404


def test_trashing_a_folder_trashes_its_tree_and_restoring_restores_it(client, top):
    folder = client.folder("f", top["id"])
    inner = client.folder("inner", folder["id"])
    own = client.folder("own", inner["id"])
    client.json("PATCH", f"/drive/v3/files/{own['id']}", body={"trashed": True})
    client.json("PATCH", f"/drive/v3/files/{folder['id']}", body={"trashed": True})

    def state(f):
        got = client.json("GET", f"/drive/v3/files/{f['id']}",
                          params={"fields": "trashed,explicitlyTrashed"})
        return got["trashed"], got["explicitlyTrashed"]

    assert state(inner) == (True, False) and state(own) == (True, True)
    client.json("PATCH", f"/drive/v3/files/{folder['id']}", body={"trashed": False})
    assert state(folder) == (False, False)
    assert state(inner) == (False, False) and state(own) == (True, True)


def test_delete_removes_a_folder_with_its_tree(client, top):
    folder = client.folder("f", top["id"])
    inner = client.multipart({"name": "x", "parents": [folder["id"]]}, b"x", "text/plain")
    status, _, body = client.request("DELETE", f"/drive/v3/files/{folder['id']}")
    assert status == 204 and body == b""
    for gone in (folder, inner):
        assert client.request("GET", f"/drive/v3/files/{gone['id']}")[0] == 404


def test_generated_and_client_supplied_ids(client, top):
    ids = client.json("GET", "/drive/v3/files/generateIds", params={"count": 2})["ids"]
    assert len(set(ids)) == 2
    made = client.folder("with id", top["id"], id=ids[0])
    assert made["id"] == ids[0]
    status, _, _ = client.request("POST", "/drive/v3/files",
                                  body={"id": ids[0], "name": "twin", "parents": [top["id"]]})
    assert status == 409


def test_concurrent_creates_get_unique_ids_and_times(client, top):
    def create(n):
        return client.folder(f"c{n}", top["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(create, range(80)))
    assert len({f["id"] for f in made}) == 80
    assert len({f["createdTime"] for f in made}) == 80
    listed = client.list(f"'{top['id']}' in parents", pageSize=1000, fields="files(id)")
    assert {f["id"] for f in listed["files"]} == {f["id"] for f in made}


def test_bodies_with_fields_drive_would_refuse(client, top):
    for body, status, reason in [
        ({"name": "x", "size": "3"}, 403, "fieldNotWritable"),
        ({"name": "x", "colour": "red"}, 400, "invalid"),
        ({"name": "x", "folderColorRgb": "#fff"}, 400, "badRequest"),
        ({"name": "x", "appProperties": {"n": 1}}, 400, "badRequest"),
    ]:
        got, _, raw = client.request("POST", "/drive/v3/files",
                                     body={**body, "parents": [top["id"]]})
        assert (got, error_of(raw)["errors"][0]["reason"]) == (status, reason), body


def test_names_are_not_unique(client, top):
    one, two = client.folder("same", top["id"]), client.folder("same", top["id"])
    assert one["id"] != two["id"]
    assert len(client.list(f"'{top['id']}' in parents and name = 'same'")["files"]) == 2


# -- resumable protocol -------------------------------------------------------------------------

def test_resumable_upload_protocol(client, top):
    chunk = 256 * 1024
    data = secrets.token_bytes(2 * chunk + 1000)
    status, headers, _ = client.request(
        "POST", "/upload/drive/v3/files",
        params={"uploadType": "resumable", "fields": "id,size,md5Checksum"},
        body={"name": "r.bin", "parents": [top["id"]]},
        headers={"X-Upload-Content-Type": "application/octet-stream",
                 "X-Upload-Content-Length": str(len(data))},
    )
    assert status == 200
    location = urlsplit(headers["Location"])
    session = location.path + "?" + location.query
    total = len(data)

    def put(start, end, *, size=total):
        return client.request("PUT", session, body=data[start:end + 1], headers={
            "Content-Range": f"bytes {start}-{end}/{size}"})

    status, headers, _ = put(0, chunk - 1, size="*")
    assert status == 308 and headers["Range"] == f"bytes=0-{chunk - 1}"
    status, headers, _ = client.request("PUT", session, body=b"",
                                        headers={"Content-Range": f"bytes */{total}"})
    assert status == 308 and headers["Range"] == f"bytes=0-{chunk - 1}"
    status, headers, _ = put(0, chunk - 1)  # a resend of what arrived changes nothing
    assert status == 308 and headers["Range"] == f"bytes=0-{chunk - 1}"
    status, _, body = put(chunk, chunk + 999)  # non-final chunks come in 256 KiB multiples
    assert status == 400 and "262144" in error_of(body)["message"]
    status, _, body = put(2 * chunk, total - 1)  # beyond what the server has
    assert status == 400
    status, headers, _ = put(chunk, 2 * chunk - 1)
    assert status == 308 and headers["Range"] == f"bytes=0-{2 * chunk - 1}"
    status, _, body = put(2 * chunk, total - 1)
    assert status == 200
    assert json.loads(body) == {"id": json.loads(body)["id"], "size": str(total),
                                "md5Checksum": hashlib.md5(data).hexdigest()}
    status, _, _ = put(0, chunk - 1)  # the session is finished
    assert status == 404


# -- faults and admin ---------------------------------------------------------------------------

@pytest.fixture
def faults(server):
    """Fault helpers bound to the server; faults are cleared whatever the test does."""
    url, token = server["url"], server["token"]
    yield url, token
    set_faults(url, token)


def test_fault_injection(client, faults):
    url, token = faults
    assert set_faults(url, token, fail_next=2, status=500)["fail_next"] == 2
    for _ in range(2):
        status, _, body = client.request("GET", "/drive/v3/files", params={"pageSize": 1})
        assert status == 500 and error_of(body)["errors"][0]["reason"] == "backendError"
    assert client.request("GET", "/drive/v3/files", params={"pageSize": 1})[0] == 200
    assert fault_state(url, token)["injected"] == 2
    set_faults(url, token, fail_next=1, status=403)
    status, _, body = client.request("GET", "/drive/v3/files", params={"pageSize": 1})
    assert status == 403
    assert error_of(body)["errors"][0] == {"domain": "usageLimits",
                                           "reason": "userRateLimitExceeded",
                                           "message": "User Rate Limit Exceeded"}
    set_faults(url, token, fail_next=1, status=429, methods=["PUT"])
    assert client.request("GET", "/drive/v3/files", params={"pageSize": 1})[0] == 200

    def sequence():
        set_faults(url, token, rate=0.5, statuses=[429, 503], seed=7)
        return [client.request("GET", "/drive/v3/files", params={"pageSize": 1})[0]
                for _ in range(12)]

    first = sequence()
    assert first == sequence() and {429, 503, 200} == set(first)
    set_faults(url, token)
    assert fault_state(url, token)["fail_next"] == 0
    assert client.request("GET", "/drive/v3/files", params={"pageSize": 1})[0] == 200


def test_reset_and_single_server_per_state_dir(tmp_path):
    token = "t"
    info = start(tmp_path, token=token)
    try:
        client = Client({**info, "token": token})
        made = client.folder("x")
        reset(info["url"], token)
        assert client.request("GET", f"/drive/v3/files/{made['id']}")[0] == 404
        with pytest.raises(ServiceStartError):
            start(tmp_path, token=token)
    finally:
        stop_pid(info["pid"])


def test_admin_paths_stay_out_of_the_drive_namespace(client):
    assert client.request("GET", "/drive/v3/_admin/faults")[0] == 404
    assert client.json("GET", "/_admin/health")["ok"] is True
    assert client.request("GET", "/drive/v3/files/" + quote("a/b"))[0] == 404


# -- the changes feed --------------------------------------------------------------------------

CHANGE_FIELDS = ("nextPageToken,newStartPageToken,"
                 "changes(fileId,removed,time,file(name,parents,md5Checksum,trashed))")


def start_token(client) -> str:
    answer = client.json("GET", "/drive/v3/changes/startPageToken")
    assert answer["kind"] == "drive#startPageToken"
    return answer["startPageToken"]


def changes_since(client, token, **params) -> dict:
    return client.json("GET", "/drive/v3/changes", params={
        "pageToken": token, "fields": CHANGE_FIELDS, "supportsAllDrives": "true",
        "includeItemsFromAllDrives": "true", "spaces": "drive", **params})


def one_change(client, action) -> dict:
    """The one change `action` makes, read from a token taken just before it."""
    token = start_token(client)
    action()
    answer = changes_since(client, token)
    assert "nextPageToken" not in answer and int(answer["newStartPageToken"]) > int(token)
    [change] = answer["changes"]
    assert RFC3339_MS.match(change["time"])
    return change


def test_every_write_to_a_file_is_a_change_drive_shapes(client, top):
    other = client.folder("elsewhere", top["id"])
    made = {}
    created = one_change(client, lambda: made.update(client.multipart(
        {"name": "a.csv", "parents": [top["id"]]}, b"id\n1\n", "text/csv")))
    file_id = made["id"]
    assert created == {"fileId": file_id, "removed": False, "time": created["time"], "file": {
        "name": "a.csv", "parents": [top["id"]], "md5Checksum": made["md5Checksum"],
        "trashed": False}}
    path = f"/drive/v3/files/{file_id}"

    revised = one_change(client, lambda: client.multipart(
        {}, b"id\n2\n", "text/csv", path=f"/upload{path}", method="PATCH"))
    assert revised["file"]["md5Checksum"] == hashlib.md5(b"id\n2\n").hexdigest()
    renamed = one_change(client, lambda: client.json("PATCH", path, body={"name": "b.csv"}))
    assert renamed["file"]["name"] == "b.csv"
    moved = one_change(client, lambda: client.json("PATCH", path, body={}, params={
        "addParents": other["id"], "removeParents": top["id"]}))
    assert moved["file"]["parents"] == [other["id"]]
    trashed = one_change(client, lambda: client.json("PATCH", path, body={"trashed": True}))
    assert trashed["removed"] is False and trashed["file"]["trashed"] is True
    deleted = one_change(client, lambda: client.request("DELETE", path))
    assert deleted == {"fileId": file_id, "removed": True, "time": deleted["time"]}


def test_a_file_changed_many_times_is_one_change_and_the_list_pages(client, top):
    token = start_token(client)
    ids = [client.folder(f"f{i}", top["id"])["id"] for i in range(5)]
    client.json("PATCH", f"/drive/v3/files/{ids[0]}", body={"name": "f0 again"})

    answer = changes_since(client, token, pageSize=2, includeRemoved="false")
    seen, pages = [change["fileId"] for change in answer["changes"]], 1
    while "nextPageToken" in answer:
        assert "newStartPageToken" not in answer
        answer = changes_since(client, answer["nextPageToken"], pageSize=2)
        seen += [change["fileId"] for change in answer["changes"]]
        pages += 1
    assert pages == 3 and seen == [*ids[1:], ids[0]]  # each file once, at its latest change
    assert changes_since(client, answer["newStartPageToken"])["changes"] == []
    whole = client.json("GET", "/drive/v3/changes", params={"pageToken": token})
    assert whole["kind"] == "drive#changeList"
    assert set(whole["changes"][0]) == {"kind", "changeType", "time", "removed", "fileId", "file"}
    assert set(whole["changes"][0]["file"]) == {"kind", "id", "name", "mimeType"}


def test_bad_page_tokens_and_fields_are_refused_as_drive_refuses_them(client):
    for token in ("abc", "0", "-3", str(int(start_token(client)) + 1000)):
        status, _, body = client.request("GET", "/drive/v3/changes", params={"pageToken": token})
        assert status == 400, token
        assert error_of(body)["message"] == "Invalid Value"
        assert error_of(body)["errors"][0]["location"] == "pageToken"
    status, _, body = client.request("GET", "/drive/v3/changes")
    assert status == 400 and error_of(body)["errors"][0]["reason"] == "required"
    status, _, body = client.request("GET", "/drive/v3/changes", params={
        "pageToken": start_token(client), "fields": "changes(file(colour))"})
    assert status == 400 and "colour" in error_of(body)["message"]


def test_page_tokens_stay_valid_across_a_restart(tmp_path):
    token = "t"
    info = start(tmp_path, token=token)
    try:
        client = Client({**info, "token": token})
        before = start_token(client)
        made = client.folder("kept")
    finally:
        stop_pid(info["pid"])
    info = start(tmp_path, token=token)
    try:
        client = Client({**info, "token": token})
        answer = changes_since(client, before)
        assert [change["fileId"] for change in answer["changes"]] == [made["id"]]
        assert answer["newStartPageToken"] == start_token(client)
    finally:
        stop_pid(info["pid"])
