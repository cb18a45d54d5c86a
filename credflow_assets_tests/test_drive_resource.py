"""DriveResource through the real google-api-python-client against the local Drive server."""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid

import dagster as dg
import pytest

from credflow_assets.local.drive_server import fault_state, set_faults, start
from credflow_assets.local.process import stop_pid
from credflow_assets.resources.drive import (
    DOCUMENT_MIME,
    FOLDER_MIME,
    DriveError,
    DriveResource,
    escape_query_literal,
)
from credflow_assets_tests.files import docx_bytes

CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = secrets.token_hex(16)
    info = start(tmp_path_factory.mktemp("drive_home"), token=token)
    yield {**info, "token": token}
    stop_pid(info["pid"])


@pytest.fixture
def drive(server):
    return DriveResource(api_url=server["url"], token=server["token"], num_retries=3)


@pytest.fixture
def faults(server):
    """(url, token) for fault injection; faults are cleared whatever the test does."""
    yield server["url"], server["token"]
    set_faults(server["url"], server["token"])


@pytest.fixture
def top(drive):
    """A fresh folder per test, so tests never see each other's files."""
    return drive.create_folder(f"test-{uuid.uuid4().hex[:8]}", "root")


def names(files):
    return sorted(f["name"] for f in files)


def test_escape_query_literal_escapes_backslash_first():
    assert escape_query_literal("O'Brien, Ann") == "O\\'Brien, Ann"
    assert escape_query_literal("Back\\slash") == "Back\\\\slash"
    assert escape_query_literal("\\'") == "\\\\\\'"


def test_folders_are_found_by_app_property_under_their_parent_only(drive, top):
    clinic = drive.create_folder("Clinic", top["id"])
    other = drive.create_folder("Other", top["id"])
    mine = drive.create_folder("Lamb, Nicholas", clinic["id"], {"therapist_id": "T-1"})
    drive.create_folder("Lamb, Nicholas", other["id"])  # same name elsewhere
    drive.create_folder("Copy", other["id"], {"therapist_id": "T-1"})  # same property elsewhere
    drive.create_folder("Lamb, Nicholas", clinic["id"], {"therapist_id": "T-2"})
    found = drive.find_children_by_app_property(clinic["id"], "therapist_id", "T-1")
    assert [f["id"] for f in found] == [mine["id"]]
    assert found[0]["mimeType"] == FOLDER_MIME
    assert found[0]["parents"] == [clinic["id"]]
    assert found[0]["webViewLink"] == drive.folder_url(mine["id"])
    assert drive.find_children_by_app_property(
        clinic["id"], "therapist_id", "T-1", mime_type=DOCUMENT_MIME) == []
    drive.update_file(mine["id"], app_properties={}, name="Lamb, Nicholas (old)")
    drive.delete_file(mine["id"])
    assert drive.find_children_by_app_property(clinic["id"], "therapist_id", "T-1") == []


def test_find_file_and_top_level_folders_with_chosen_ids(drive):
    folder_id = f"local-{uuid.uuid4().hex[:10]}"
    assert drive.find_file(folder_id) is None
    made = drive.create_folder("Top level", None, folder_id=folder_id)
    assert made["id"] == folder_id
    assert drive.find_file(folder_id)["parents"] == [drive.get_file("root", fields="id")["id"]]


def test_create_folder_with_a_generated_id(drive, top):
    folder_id = drive.generate_ids(1)[0]
    made = drive.create_folder("Fixed", top["id"], folder_id=folder_id)
    assert made["id"] == folder_id
    with pytest.raises(DriveError) as raised:
        drive.create_folder("Fixed", top["id"], folder_id=folder_id)
    assert raised.value.status == 409


def test_small_upload_is_one_request_and_big_one_streams_in_chunks(drive, top, tmp_path, faults):
    url, token = faults
    small = tmp_path / "small.pdf"
    small.write_bytes(b"%PDF-1.4 tiny\r\n\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * CHUNK + 1234))
    set_faults(url, token)  # zero the request counter
    made = drive.upload_file(small, "small.pdf", top["id"], mime_type="application/pdf",
                             app_properties={"source": "s3"}, chunk_size=CHUNK)
    assert fault_state(url, token)["requests"] == 1  # multipart: one request
    assert made["md5Checksum"] == hashlib.md5(small.read_bytes()).hexdigest()
    assert made["size"] == str(small.stat().st_size)
    assert made["appProperties"] == {"source": "s3"}
    set_faults(url, token)
    made_big = drive.upload_file(big, "big.bin", top["id"],
                                 mime_type="application/octet-stream", chunk_size=CHUNK)
    assert fault_state(url, token)["requests"] == 1 + 4  # start + four chunks
    assert made_big["md5Checksum"] == hashlib.md5(big.read_bytes()).hexdigest()
    for upload, source in ((made, small), (made_big, big)):
        dest = drive.download_file(upload["id"], tmp_path / f"copy-{source.name}",
                                   chunk_size=CHUNK)
        assert hashlib.md5(dest.read_bytes()).hexdigest() == upload["md5Checksum"]
        assert not dest.with_name(dest.name + ".part").exists()


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n", b""])
def test_multipart_uploads_keep_every_byte(drive, top, tmp_path, ending):
    data = os.urandom(1000) + ending  # googleapiclient frames multipart parts with bare LF
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    made = drive.upload_file(path, "x.bin", top["id"], mime_type="application/octet-stream")
    assert (made["size"], made["md5Checksum"]) == (str(len(data)), hashlib.md5(data).hexdigest())


def test_a_failed_chunk_is_retried_on_its_own(drive, top, tmp_path, faults):
    data = os.urandom(2 * CHUNK + 10)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    set_faults(*faults, fail_next=1, status=503, methods=["PUT"])
    made = drive.upload_file(path, "x.bin", top["id"], mime_type="application/octet-stream",
                             chunk_size=CHUNK)
    assert made["md5Checksum"] == hashlib.md5(data).hexdigest()
    assert fault_state(*faults)["injected"] == 1


def test_a_download_hashed_as_it_arrives_matches_drive_even_when_a_chunk_is_retried(
        drive, top, tmp_path, faults):
    data = os.urandom(3 * CHUNK + 10)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    made = drive.upload_file(path, "x.bin", top["id"], mime_type="application/octet-stream")
    set_faults(*faults, fail_next=1, status=503, methods=["GET"])
    digest = hashlib.md5()
    dest = drive.download_file(made["id"], tmp_path / "back.bin", chunk_size=CHUNK, digest=digest)
    assert fault_state(*faults)["injected"] == 1
    assert dest.read_bytes() == data
    assert digest.hexdigest() == made["md5Checksum"]


def test_conversion_to_a_google_doc_and_export(drive, top, tmp_path):
    text = "Credentialing notes\nLine two — ünïcode\n"
    source = tmp_path / "notes.txt"
    source.write_text(text, encoding="utf-8")
    doc = drive.upload_file(source, "notes", top["id"], mime_type="text/plain",
                            convert_to=DOCUMENT_MIME)
    assert doc["mimeType"] == DOCUMENT_MIME
    assert "md5Checksum" not in doc and "size" not in doc
    exported = drive.export_file(doc["id"], "text/plain").decode("utf-8")
    assert exported.removeprefix("\ufeff").replace("\r\n", "\n") == text
    assert drive.export_file(doc["id"], "application/pdf").startswith(b"%PDF")
    with pytest.raises(DriveError) as raised:
        drive.download_file(doc["id"], tmp_path / "doc.bin")
    assert raised.value.reason == "fileNotDownloadable"
    assert not (tmp_path / "doc.bin").exists()


def test_a_docx_converts_to_a_google_doc(drive, top, tmp_path):
    # The .docx MIME type is long enough that googleapiclient folds its multipart header.
    source = tmp_path / "resume.docx"
    source.write_bytes(docx_bytes("Nicholas Lamb, LCSW"))
    doc = drive.upload_file(
        source, "resume", top["id"], convert_to=DOCUMENT_MIME,
        mime_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    assert doc["mimeType"] == DOCUMENT_MIME
    assert "Nicholas Lamb, LCSW" in drive.export_file(doc["id"]).decode("utf-8-sig")


def test_a_csv_imports_as_a_google_sheet_and_exports_as_csv(drive, top, tmp_path):
    source = tmp_path / "referrals.csv"
    source.write_text("ctas_id,first_name\nCT-1,Ann\nCT-2,Erin\n")
    sheet = drive.upload_file(source, "referrals", top["id"], mime_type="text/csv",
                              convert_to="application/vnd.google-apps.spreadsheet")
    assert sheet["mimeType"] == "application/vnd.google-apps.spreadsheet"
    assert "md5Checksum" not in sheet
    assert drive.export_file(sheet["id"], "text/csv").decode() == source.read_text()
    with pytest.raises(DriveError) as raised:
        drive.export_file(sheet["id"], "application/pdf")
    assert raised.value.status == 400


def test_move_rename_and_app_properties_update(drive, top, tmp_path):
    inbox, done = drive.create_folder("inbox", top["id"]), drive.create_folder("done", top["id"])
    path = tmp_path / "a.txt"
    path.write_text("v1")
    made = drive.upload_file(path, "a.txt", inbox["id"], mime_type="text/plain",
                             app_properties={"status": "new", "keep": "yes"})
    moved = drive.update_file(made["id"], add_parents=done["id"], remove_parents=[inbox["id"]],
                              name="a (processed).txt",
                              app_properties={"status": "done", "keep": None})
    assert moved["parents"] == [done["id"]]
    assert moved["name"] == "a (processed).txt"
    assert moved["appProperties"] == {"status": "done"}
    assert moved["modifiedTime"] > made["modifiedTime"]
    path.write_text("version two")
    replaced = drive.update_file(made["id"], local_path=path, mime_type="text/plain")
    assert replaced["md5Checksum"] == hashlib.md5(b"version two").hexdigest()
    assert drive.get_file(made["id"], fields="id,name")["name"] == "a (processed).txt"
    assert drive.find_children_by_app_property(done["id"], "status", "done")[0]["id"] == made["id"]
    assert drive.find_children_by_app_property(inbox["id"], "status", "done") == []


def test_paging_returns_every_file_once(drive, top, faults):
    made = {drive.create_folder(f"f{n:03d}", top["id"])["id"] for n in range(250)}
    set_faults(*faults)  # zero the request counter
    listed = [f["id"] for f in drive.list_files(f"'{top['id']}' in parents", fields="id",
                                                page_size=100)]
    assert fault_state(*faults)["requests"] == 3
    assert len(listed) == 250 and set(listed) == made


def test_a_query_too_long_for_a_url_still_works(drive, top):
    # Over 2,048 characters googleapiclient sends the GET as a POST with
    # X-HTTP-Method-Override, as Drive allows.
    wanted = [drive.create_folder(f"wanted {n}", top["id"])["id"] for n in range(3)]
    decoys = [f"decoy-{n:04d}-{'x' * 40}" for n in range(60)]
    q = " or ".join(f"'{folder_id}' in parents" for folder_id in [top["id"], *decoys])
    assert len(q) > 2048
    assert sorted(f["id"] for f in drive.list_files(q, fields="id")) == sorted(wanted)


def test_name_contains_and_name_equals(drive, top):
    for name in ("Lambert, Nicholas", "Lamb, Nicholas", "HelloWorld", "O'Brien, Ann",
                 "Back\\slash"):
        drive.create_folder(name, top["id"])
    scope = f"'{top['id']}' in parents and "

    def contains(text):
        return names(drive.list_files(scope + f"name contains '{escape_query_literal(text)}'"))

    def equals(text):
        return names(drive.list_files(scope + f"name = '{escape_query_literal(text)}'"))

    assert contains("Lamb") == ["Lamb, Nicholas", "Lambert, Nicholas"]
    assert contains("nicholas") == ["Lamb, Nicholas", "Lambert, Nicholas"]
    assert contains("World") == []
    assert contains("lamb nich") == ["Lamb, Nicholas", "Lambert, Nicholas"]
    assert contains("lambert") == ["Lambert, Nicholas"]
    assert equals("Lamb") == []
    assert equals("Lamb, Nicholas") == ["Lamb, Nicholas"]
    assert equals("O'Brien, Ann") == ["O'Brien, Ann"]
    assert equals("Back\\slash") == ["Back\\slash"]


def test_an_unknown_clause_is_a_drive_error_naming_it(drive):
    with pytest.raises(DriveError) as raised:
        list(drive.list_files("name = 'x' and colour = 'red'"))
    error = raised.value
    assert error.status == 400 and error.reason == "invalid"
    assert "colour" in str(error) and "list files" in str(error)


def test_429s_are_retried_until_success(drive, top, faults):
    set_faults(*faults, fail_next=2, status=429)
    assert drive.get_file(top["id"])["id"] == top["id"]
    assert fault_state(*faults)["injected"] == 2


@pytest.mark.parametrize("status", [403, 500])
def test_rate_limit_403s_and_500s_are_retried(drive, top, faults, status):
    set_faults(*faults, fail_next=1, status=status)
    assert drive.get_file(top["id"])["id"] == top["id"]
    state = fault_state(*faults)
    assert state["injected"] == 1 and state["requests"] == 2


def test_a_404_fails_at_once_with_drives_message(drive, faults):
    set_faults(*faults)
    with pytest.raises(DriveError) as raised:
        drive.get_file("no-such-file")
    assert raised.value.status == 404 and raised.value.reason == "notFound"
    assert "File not found: no-such-file." in str(raised.value)
    assert "get file no-such-file" in str(raised.value)
    assert fault_state(*faults)["requests"] == 1


def test_retries_give_up_after_num_retries(server, faults):
    drive = DriveResource(api_url=server["url"], token=server["token"], num_retries=0)
    set_faults(*faults, fail_next=1, status=500)
    with pytest.raises(DriveError) as raised:
        drive.get_file("root")
    assert raised.value.status == 500 and raised.value.reason == "backendError"


@pytest.mark.parametrize("token", [None, "wrong-token-value"])
def test_without_the_right_token_calls_fail_with_401(server, token):
    drive = DriveResource(api_url=server["url"], token=token)
    with pytest.raises(DriveError) as raised:
        drive.get_file("root")
    assert raised.value.status == 401 and raised.value.reason == "authError"
    assert server["token"] not in str(raised.value)
    if token:
        assert token not in str(raised.value)


def test_state_persists_across_a_restart(tmp_path):
    token = "restart-token"
    info = start(tmp_path, token=token)
    try:
        drive = DriveResource(api_url=info["url"], token=token)
        folder = drive.create_folder("kept", "root", {"k": "v"})
        data = tmp_path / "data.bin"
        data.write_bytes(b"persist me")
        made = drive.upload_file(data, "data.bin", folder["id"], mime_type="text/plain")
    finally:
        stop_pid(info["pid"])
    info = start(tmp_path, token=token)
    try:
        drive = DriveResource(api_url=info["url"], token=token)
        assert [f["id"] for f in drive.find_children_by_app_property("root", "k", "v")] == [
            folder["id"]]
        dest = drive.download_file(made["id"], tmp_path / "back.bin")
        assert dest.read_bytes() == b"persist me"
        later = drive.create_folder("later", "root")
        assert later["createdTime"] > made["createdTime"]
    finally:
        stop_pid(info["pid"])


def test_the_resource_works_inside_dagster_with_an_env_var_token(server, monkeypatch):
    monkeypatch.setenv("CREDFLOW_DRIVE_TOKEN", server["token"])

    @dg.asset
    def drive_folder(drive: DriveResource) -> dg.MaterializeResult:
        folder = drive.create_folder(f"from-dagster-{uuid.uuid4().hex[:6]}", "root")
        return dg.MaterializeResult(
            metadata={"folder": dg.MetadataValue.url(drive.folder_url(folder["id"]))}
        )

    result = dg.materialize(
        [drive_folder],
        resources={"drive": DriveResource(api_url=server["url"],
                                          token=dg.EnvVar("CREDFLOW_DRIVE_TOKEN"))},
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    link = event.materialization.metadata["folder"].value
    assert link.startswith(f"{server['url']}drive/folders/")


def test_folder_url_points_at_google_in_production():
    assert DriveResource().folder_url("abc") == "https://drive.google.com/drive/folders/abc"
