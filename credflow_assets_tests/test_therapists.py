"""Therapist uploads → MPF folders, end to end on a stack of its own, driven by `credflow sync`."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa
from pypdf import PdfReader

from credflow_assets.resources.drive import DriveResource
from credflow_assets.therapists import mpf
from credflow_assets.therapists.directory import metadata as directory_metadata
from credflow_assets.therapists.directory import therapists_table
from credflow_assets.therapists.names import JOB_NAME
from credflow_assets.therapists.renditions import RenditionError, render_pdfs
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack
from credflow_assets_tests.files import docx_bytes, pdf_bytes, png_bytes

BIN = Path(sys.executable).parent
THERAPISTS = {
    "1001": ("Nicholas", "Lamb"),
    "1002": ("Nicholas", "Lambert"),
    "1003": ("Erin", "Adams"),
    "1004": ("Erin", "Adams"),
    "1005": ("Ann", "O'Brien"),
    "1006": ("José", "Núñez-Ávila"),
}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A stack of its own (its SQS queue sees only this module's uploads), with a directory."""
    home = tmp_path_factory.mktemp("therapists") / "home"
    with running_stack(home) as (_, config, variables):
        engine = sa.create_engine(variables["CREDFLOW_DIRECTORY_DB_URL"])
        directory_metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(therapists_table.insert(), [
                {"id": tid, "first_name": first, "last_name": last,
                 "email": f"{tid}@example.com", "updated_at": datetime.now(timezone.utc)}
                for tid, (first, last) in THERAPISTS.items()
            ])
        drive = DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                              token=variables["CREDFLOW_DRIVE_TOKEN"])
        s3 = boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"])
        try:
            yield {"home": home, "config": config, "env": variables, "engine": engine,
                   "drive": drive, "s3": s3}
        finally:
            engine.dispose()


def run_credflow(flow, *args: str) -> subprocess.Popen:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(flow["home"]), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG),
           # The command runs the code under test (a worktree's, on PYTHONPATH), not the
           # checkout the virtualenv's editable install points at.
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    return subprocess.Popen([str(BIN / "credflow"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def credflow(flow, *args: str) -> tuple[int, str]:
    process = run_credflow(flow, *args)
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def upload(flow, key: str, body: bytes) -> None:
    flow["s3"].put_object(Bucket=flow["config"].buckets.signup, Key=key, Body=body)


def root_folders(flow) -> list[dict]:
    return mpf.list_children(flow["drive"], flow["config"].drive.mpf_root_folder_id,
                             folders_only=True)


def folders_of(flow, therapist_id: str) -> list[dict]:
    return [folder for folder in root_folders(flow)
            if (folder.get("appProperties") or {}).get(mpf.THERAPIST_ID) == therapist_id]


def test_two_concurrent_syncs_put_every_file_in_its_own_therapists_only_folder(flow):
    for tid in THERAPISTS:
        upload(flow, f"{tid}/license.txt", f"License of therapist {tid}\n".encode())
        upload(flow, f"{tid}/photo.png", png_bytes())
    upload(flow, "1001/resume.docx", docx_bytes("Nicholas Lamb, LCSW"))
    upload(flow, "1002/resume.docx", docx_bytes("Nicholas Lambert, LMFT"))

    first, second = run_credflow(flow, "sync"), run_credflow(flow, "sync")
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0, outputs[0]
    assert second.returncode == 0, outputs[1]

    drive = flow["drive"]
    root_id = flow["config"].drive.mpf_root_folder_id
    for tid, (first_name, last_name) in THERAPISTS.items():
        folders = folders_of(flow, tid)
        assert len(folders) == 1, f"therapist {tid} has {len(folders)} folders"
        folder = folders[0]
        assert folder["parents"] == [root_id]
        assert folder["name"] == f"{last_name}_{first_name}_{tid}"
        files = mpf.list_children(drive, folder["id"])
        assert {(f.get("appProperties") or {}).get(mpf.THERAPIST_ID) for f in files} == {tid}
        identities = [(f["appProperties"][mpf.S3_KEY], f["appProperties"][mpf.RENDITION])
                      for f in files]
        assert len(identities) == len(set(identities)), f"duplicate files for {tid}"
        expected = {(f"{tid}/license.txt", "original"), (f"{tid}/license.txt", "pdf"),
                    (f"{tid}/license.txt", "gdoc"), (f"{tid}/photo.png", "original"),
                    (f"{tid}/photo.png", "pdf")}
        if tid in {"1001", "1002"}:
            expected |= {(f"{tid}/resume.docx", r) for r in ("original", "pdf", "gdoc")}
        assert set(identities) == expected
    # Nothing else at the root: no nesting, no strays.
    assert len(root_folders(flow)) == len(THERAPISTS)
    assert all(not mpf.list_children(drive, folder["id"], folders_only=True)
               for folder in root_folders(flow))


def test_docx_png_and_text_renditions_are_valid_pdfs(flow, tmp_path):
    drive = flow["drive"]
    folder = folders_of(flow, "1001")[0]
    pdfs = {f["appProperties"][mpf.S3_KEY]: f for f in mpf.list_children(drive, folder["id"])
            if f["appProperties"][mpf.RENDITION] == "pdf"}
    assert set(pdfs) == {"1001/license.txt", "1001/photo.png", "1001/resume.docx"}
    for key, file in pdfs.items():
        local = drive.download_file(file["id"], tmp_path / f"{file['id']}.pdf")
        assert len(PdfReader(local).pages) >= 1, key
    gdoc = next(f for f in mpf.list_children(drive, folder["id"])
                if f["appProperties"][mpf.RENDITION] == "gdoc"
                and f["appProperties"][mpf.S3_KEY] == "1001/license.txt")
    assert gdoc["mimeType"] == "application/vnd.google-apps.document"
    assert "License of therapist 1001" in drive.export_file(gdoc["id"]).decode("utf-8-sig")


def test_a_second_sync_with_nothing_new_launches_nothing(flow):
    code, output = credflow(flow, "sync")
    assert code == 0, output
    assert "sync: 0 run(s)" in output


def test_a_name_change_renames_the_same_folder(flow):
    before = folders_of(flow, "1005")[0]
    with flow["engine"].begin() as connection:
        connection.execute(therapists_table.update().where(therapists_table.c.id == "1005")
                           .values(last_name="O'Brien-Walsh"))
    upload(flow, "1005/certificate.pdf", pdf_bytes())
    code, output = credflow(flow, "sync")
    assert code == 0, output
    after = folders_of(flow, "1005")
    assert [folder["id"] for folder in after] == [before["id"]]
    assert after[0]["name"] == "O'Brien-Walsh_Ann_1005"
    names = {f["name"] for f in mpf.list_children(flow["drive"], before["id"])}
    assert {"license.txt", "photo.png", "certificate.pdf"} <= names


def test_an_unknown_therapist_fails_clearly_and_is_retried_once_the_directory_knows_them(flow):
    upload(flow, "1999/license.txt", b"a license")
    code, output = credflow(flow, "sync")
    assert code == 1
    assert f"FAILED {JOB_NAME} partition 1999" in output
    assert "'1999' is not in the therapist directory" in output
    assert folders_of(flow, "1999") == []

    with flow["engine"].begin() as connection:
        connection.execute(therapists_table.insert().values(
            id="1999", first_name="Late", last_name="Signup", email="late@example.com"))
    code, output = credflow(flow, "sync")
    assert code == 0, output
    folder = folders_of(flow, "1999")[0]
    assert folder["name"] == "Signup_Late_1999"
    assert "license.txt" in {f["name"] for f in mpf.list_children(flow["drive"], folder["id"])}


def test_an_unconvertible_file_keeps_its_original_and_says_why(flow):
    upload(flow, "1003/scan.xyz", b"\x00\x01 not a known format")
    upload(flow, "1003/locked.pdf", pdf_bytes(encrypted=True))
    code, output = credflow(flow, "sync")
    assert code == 0, output
    lineage = json.loads(credflow(flow, "lineage", "1003", "--json")[1])
    by_key = {entry["s3_key"]: entry for entry in lineage["files"]}
    assert "unknown file type .xyz" in by_key["1003/scan.xyz"]["renditions"]["pdf"]["missing"]
    assert by_key["1003/scan.xyz"]["renditions"]["original"]["id"]
    assert "encrypted PDF" in by_key["1003/locked.pdf"]["renditions"]["pdf"]["missing"]
    assert by_key["1003/license.txt"]["renditions"]["pdf"]["id"]

    log_lines = credflow(flow, "logs", "1003")[1]
    assert ("WARNING dagster: 1003/scan.xyz: no PDF rendition: unknown file type .xyz: only "
            "PDFs, images and office documents are rendered\n") in log_lines
    # The rendering's own line is the parse log's only (not an event), in the same format.
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO credflow.therapists: 0 of 2 PDF "
                     r"rendition\(s\) made in \d+\.\ds$", log_lines, re.MULTILINE), log_lines
    assert "Adams" not in log_lines and "Erin" not in log_lines


def test_lineage_names_the_drive_files_and_the_run(flow):
    code, output = credflow(flow, "lineage", "1002", "--json")
    assert code == 0, output
    lineage = json.loads(output)
    folder = folders_of(flow, "1002")[0]
    assert lineage["folder"]["id"] == folder["id"]
    keys = {entry["s3_key"] for entry in lineage["files"]}
    assert keys == {"1002/license.txt", "1002/photo.png", "1002/resume.docx"}
    on_drive = {f["id"] for f in mpf.list_children(flow["drive"], folder["id"])}
    for entry in lineage["files"]:
        assert entry["run_id"]
        for rendition in ("original", "pdf"):
            assert entry["renditions"][rendition]["id"] in on_drive
    with dg.DagsterInstance.from_ref(dg.DagsterInstance.get().get_ref()) as instance:
        assert instance.get_run_by_id(lineage["files"][0]["run_id"]).tags[
            "credflow/therapist_id"] == "1002"
    text = credflow(flow, "lineage", "1002")[1]
    assert "1002/resume.docx" in text and folder["id"] in text


def test_office_files_of_one_run_each_get_their_own_pdf_and_a_broken_one_says_so(flow, tmp_path):
    # The run converts its office files together; each PDF must still be its own file's, and a
    # file LibreOffice cannot read must cost only that file its PDF.
    upload(flow, "1004/notes.txt", b"Supervision notes of therapist 1004\n")
    upload(flow, "1004/letter.docx", docx_bytes("Reference letter for Erin Adams"))
    upload(flow, "1004/broken.docx", b"PK\x03\x04 not really a docx")
    code, output = credflow(flow, "sync")
    assert code == 0, output
    lineage = json.loads(credflow(flow, "lineage", "1004", "--json")[1])
    by_key = {entry["s3_key"]: entry for entry in lineage["files"]}
    assert ("LibreOffice could not convert broken.docx"
            in by_key["1004/broken.docx"]["renditions"]["pdf"]["missing"])
    assert by_key["1004/broken.docx"]["renditions"]["original"]["id"]
    for key, text in (("1004/notes.txt", "Supervision notes of therapist 1004"),
                      ("1004/letter.docx", "Reference letter for Erin Adams")):
        pdf_id = by_key[key]["renditions"]["pdf"]["id"]
        local = flow["drive"].download_file(pdf_id, tmp_path / f"{pdf_id}.pdf")
        assert text in PdfReader(local).pages[0].extract_text(), key


def test_render_pdfs_keeps_same_named_files_apart(tmp_path):
    sources = []
    for therapist_id in ("2001", "2002"):
        folder = tmp_path / therapist_id
        folder.mkdir()
        (folder / "cv.txt").write_text(f"CV of therapist {therapist_id}\n")
        sources.append(folder / "cv.txt")
    broken = tmp_path / "2003" / "cv.docx"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 not really a docx")
    results = render_pdfs([*sources, broken])
    for source, therapist_id in zip(sources, ("2001", "2002")):
        assert results[source] == source.with_suffix(".pdf")
        assert f"CV of therapist {therapist_id}" in PdfReader(results[source]).pages[0].extract_text()
    assert isinstance(results[broken], RenditionError)
    assert "LibreOffice could not convert cv.docx" in str(results[broken])
