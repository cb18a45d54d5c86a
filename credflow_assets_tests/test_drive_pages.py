"""The local Drive server's web pages, as a person clicking Dagster's Drive links sees them.

A real server in a temporary home; pages are fetched with no token, as a browser would, and read
through html.parser: the text on the page and where its links go.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
from html.parser import HTMLParser
from pathlib import Path

import pytest

from credflow_assets.local.drive_server import start
from credflow_assets.local.drive_server.server import DriveServer
from credflow_assets.local.drive_server.store import Store
from credflow_assets.local.process import stop_pid
from credflow_assets.resources.drive import DOCUMENT_MIME, DriveResource

THERAPIST = "O'Brien, <script>alert(1)</script> & Co"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
CSV = "license,state,expires\nLMFT-12345,CA,2027-01-31\n<b>not bold</b>,NY,\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = secrets.token_hex(16)
    home = tmp_path_factory.mktemp("drive_pages")
    info = start(home, token=token)
    yield {**info, "token": token, "home": home}
    stop_pid(info["pid"])


@pytest.fixture(scope="module")
def drive(server):
    return DriveResource(api_url=server["url"], token=server["token"], num_retries=0)


@pytest.fixture(scope="module")
def tree(server, drive, tmp_path_factory):
    """My Drive / Magically Processed Folders / a therapist's folder holding a subfolder, a PDF,
    a CSV and a Google Doc: what credflow's MPF assets make."""
    files = tmp_path_factory.mktemp("files")
    mpf = drive.create_folder("Magically Processed Folders", None)
    therapist = drive.create_folder(THERAPIST, mpf["id"], {"therapist_id": "t-42"})
    licenses = drive.create_folder("Licenses", therapist["id"])
    (files / "license.pdf").write_bytes(PDF)
    pdf = drive.upload_file(files / "license.pdf", "A license <scan>.pdf", therapist["id"],
                            mime_type="application/pdf",
                            app_properties={"source": "signup", "sha": "abc&def"})
    (files / "licenses.csv").write_text(CSV)
    csv = drive.upload_file(files / "licenses.csv", "licenses.csv", therapist["id"],
                            mime_type="text/csv")
    (files / "summary.txt").write_text("Summary for O'Brien\nAll good.\n")
    doc = drive.upload_file(files / "summary.txt", "Summary", therapist["id"],
                            mime_type="text/plain", convert_to=DOCUMENT_MIME)
    return {"mpf": mpf, "therapist": therapist, "licenses": licenses, "pdf": pdf, "csv": csv,
            "doc": doc}


class Page(HTMLParser):
    """What a browser shows: the text (entities decoded), the links, the h1 and the nav."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        super().__init__()
        self.status, self.headers, self.raw = status, headers, body.decode("utf-8")
        self.links: list[tuple[str, str]] = []
        self.nav_links: list[tuple[str, str]] = []
        self.h1 = self.pre = ""
        self._text: list[str] = []
        self._href: str | None = None
        self._stack: list[str] = []
        self.feed(self.raw)
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        if tag == "a":
            self._href, self._link_text = dict(attrs)["href"], ""

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._link_text, self._href))
            if "nav" in self._stack:
                self.nav_links.append((self._link_text, self._href))
            self._href = None
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data):
        if "style" in self._stack or "title" in self._stack:
            return
        self._text.append(data + " ")
        if self._href is not None:
            self._link_text += data
        if "h1" in self._stack:
            self.h1 = (self.h1 + data).strip()
        if "pre" in self._stack:
            self.pre += data

    def link(self, text: str) -> str:
        """Where the links showing `text` go (one place, however many links)."""
        [href] = {href for link_text, href in self.links if link_text == text}
        return href


def fetch(server: dict, path: str, *, host: str | None = None, token: str | None = None):
    """GET `path` as a browser would: no token unless told, Host as given."""
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if host is not None:
        headers["Host"] = host
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def page(server: dict, path: str, expect: int = 200, **kwargs) -> Page:
    status, headers, body = fetch(server, path, **kwargs)
    assert status == expect, body[:500]
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    return Page(status, headers, body)


def relative(url: str, server: dict) -> str:
    assert url.startswith(server["url"]), url
    return "/" + url[len(server["url"]):]


def test_a_therapist_folder_lists_its_files_with_working_links(server, tree):
    folder = page(server, relative(tree["therapist"]["webViewLink"], server))
    assert folder.h1.endswith(THERAPIST)
    names = [text for text, _ in folder.links if text in
             ("Licenses", "A license <scan>.pdf", "licenses.csv", "Summary")]
    assert names == ["Licenses", "A license <scan>.pdf", "licenses.csv", "Summary"]  # folders first
    assert folder.link("Licenses") == f"/drive/folders/{tree['licenses']['id']}"
    for name, key in (("A license <scan>.pdf", "pdf"), ("licenses.csv", "csv"),
                      ("Summary", "doc")):
        assert folder.link(name) == f"/file/d/{tree[key]['id']}/view"
        assert page(server, folder.link(name)).h1.endswith(name)  # the link opens the file
    assert page(server, folder.link("Licenses")).text.count("This folder is empty.") == 1
    # Each child shows its type, size, modified time and appProperties.
    assert "application/pdf" in folder.text and f"{len(PDF) / 1024:.1f} KB" in folder.text
    assert tree["pdf"]["modifiedTime"] in folder.text
    assert "source = signup" in folder.text and "sha = abc&def" in folder.text


def test_the_breadcrumb_climbs_to_my_drive(server, tree):
    file = page(server, f"/file/d/{tree['pdf']['id']}/view")
    assert [text for text, _ in file.nav_links] == [
        "My Drive", "Magically Processed Folders", THERAPIST]
    assert file.nav_links[-1][1] == f"/drive/folders/{tree['therapist']['id']}"
    up = page(server, file.nav_links[1][1])
    assert up.h1.endswith("Magically Processed Folders")
    root = page(server, up.nav_links[0][1])
    assert root.h1.endswith("My Drive") and root.nav_links == []
    assert root.link("Magically Processed Folders") == f"/drive/folders/{tree['mpf']['id']}"
    home = page(server, "/")  # the server's root page is My Drive too
    assert home.h1 == root.h1 and home.link("Magically Processed Folders")


def test_a_file_page_shows_its_metadata_and_the_download_returns_its_bytes(server, tree):
    pdf = tree["pdf"]
    view = page(server, relative(pdf["webViewLink"], server))
    assert view.h1.endswith("A license <scan>.pdf")
    for shown in ("application/pdf", hashlib.md5(PDF).hexdigest(), f"{len(PDF):,} bytes",
                  pdf["createdTime"], pdf["modifiedTime"], "source = signup",
                  "sha = abc&def", THERAPIST):
        assert shown in view.text, shown
    assert view.link(THERAPIST) == f"/drive/folders/{tree['therapist']['id']}"  # its parent
    status, headers, body = fetch(server, view.link("Download"))
    assert status == 200 and body == PDF
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''A%20license%20%3Cscan%3E.pdf" in headers["Content-Disposition"]


def test_text_files_show_inline_and_google_docs_download_as_text(server, tree):
    csv = page(server, f"/file/d/{tree['csv']['id']}/view")
    assert csv.pre == CSV and "<b>not bold</b>" not in csv.raw
    doc = page(server, f"/file/d/{tree['doc']['id']}/view")
    assert "Summary for O'Brien" in doc.pre
    status, headers, body = fetch(server, doc.link("Download"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert body.decode("utf-8-sig").replace("\r\n", "\n") == "Summary for O'Brien\nAll good.\n"
    assert 'filename="Summary.txt"' in headers["Content-Disposition"]


def test_a_long_text_is_cut_with_a_note(server, drive, tree, tmp_path):
    long_text = tmp_path / "long.txt"
    long_text.write_text(("x" * 99 + "\n") * 2100)  # 210,000 bytes
    made = drive.upload_file(long_text, "long.txt", tree["licenses"]["id"],
                             mime_type="text/plain")
    view = page(server, f"/file/d/{made['id']}/view")
    assert len(view.pre) == 200 * 1024
    assert "Showing the first 200 KB" in view.text


def test_names_are_escaped_not_run(server, tree):
    folder = page(server, f"/drive/folders/{tree['therapist']['id']}")
    assert "<script>" not in folder.raw and "&lt;script&gt;" in folder.raw
    assert "O&#x27;Brien" in folder.raw and "&amp; Co" in folder.raw
    assert "default-src 'none'" in folder.headers["Content-Security-Policy"]


def test_a_trashed_folder_says_so(server, tree):
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    try:
        trashed = DriveResource(api_url=server["url"], token=server["token"]).create_folder(
            "Old documents", tree["therapist"]["id"])
        connection.request(
            "PATCH", f"/drive/v3/files/{trashed['id']}", body=json.dumps({"trashed": True}),
            headers={"Authorization": f"Bearer {server['token']}",
                     "Content-Type": "application/json"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert "This folder was moved to the trash." in page(
        server, f"/drive/folders/{trashed['id']}").text
    listing = page(server, f"/drive/folders/{tree['therapist']['id']}")
    assert "Old documents (in trash)" in listing.text


def test_unknown_ids_get_a_404_page(server):
    for path in ("/drive/folders/no-such-id", "/file/d/no-such-id/view",
                 "/file/d/no-such-id/download"):
        missing = page(server, path, expect=404)
        assert "There is no file or folder with id no-such-id." in missing.text


def test_a_file_id_in_a_folder_link_and_back_redirects(server, tree):
    status, headers, _ = fetch(server, f"/drive/folders/{tree['pdf']['id']}")
    assert status == 302 and headers["Location"] == f"/file/d/{tree['pdf']['id']}/view"
    status, headers, _ = fetch(server, f"/file/d/{tree['mpf']['id']}/view")
    assert status == 302 and headers["Location"] == f"/drive/folders/{tree['mpf']['id']}"


def test_pages_need_no_token_but_the_api_and_admin_still_do(server, tree):
    assert fetch(server, f"/drive/folders/{tree['mpf']['id']}")[0] == 200
    assert fetch(server, "/drive/v3/files")[0] == 401
    assert fetch(server, f"/drive/v3/files/{tree['pdf']['id']}?alt=media")[0] == 401
    assert fetch(server, "/_admin/health")[0] == 401
    assert fetch(server, "/_admin/health", token=server["token"])[0] == 200


def test_pages_answer_only_to_loopback_names(server, tree):
    path = f"/drive/folders/{tree['mpf']['id']}"
    for host in (f"127.0.0.1:{server['port']}", f"localhost:{server['port']}", "[::1]:80"):
        assert fetch(server, path, host=host)[0] == 200, host
    # A site whose DNS name was rebound to 127.0.0.1 sends its own name: refused.
    assert fetch(server, path, host=f"attacker.example:{server['port']}")[0] == 403


def test_web_view_links_and_folder_urls_are_absolute_and_open(server, drive, tree):
    for key in ("mpf", "therapist", "licenses"):
        folder = tree[key]
        assert folder["webViewLink"] == f"{server['url']}drive/folders/{folder['id']}"
        assert drive.folder_url(folder["id"]) == folder["webViewLink"]
    for key in ("pdf", "csv", "doc"):
        file = tree[key]
        assert file["webViewLink"] == f"{server['url']}file/d/{file['id']}/view"
    for item in tree.values():
        assert fetch(server, relative(item["webViewLink"], server))[0] == 200
    root = drive.get_file("root")
    assert root["webViewLink"] == f"{server['url']}drive/folders/{root['id']}"


def test_the_server_listens_on_127_0_0_1_only(server, tmp_path):
    # The spawned server: every listening socket on its port is 127.0.0.1's, none IPv6.
    listening = _listening_addresses(server["port"])
    assert listening == {"127.0.0.1"}, listening
    # And the class binds loopback whatever it is given.
    store = Store(tmp_path / "state")
    in_process = DriveServer(0, store, "t")
    try:
        assert in_process.server_address[0] == "127.0.0.1"
    finally:
        in_process.server_close()
        store.close()


def _listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket in LISTEN on `port`, from /proc/net/tcp and tcp6."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    found = set()
    for table in tables:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian hex
                    found.add(".".join(str(b) for b in bytes.fromhex(address)[::-1]))
                else:
                    found.add(f"ipv6:{address}")
    return found
