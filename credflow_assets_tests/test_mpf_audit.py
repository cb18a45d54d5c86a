"""The MPF audit and repair against the real local stack (the Drive server, moto S3).

Each test gets its own MPF root (a fresh top-level Drive folder), its own S3 bucket standing in
for the signup bucket (so no upload event reaches the shared signup queue) and its own SQLite
therapist directory; nothing one test seeds is seen by another. Assertions list Drive itself.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict

import pytest
import sqlalchemy as sa

from credflow_assets.local.moto_server import ensure_bucket
from credflow_assets.local.seed_mpf import THERAPISTS, UPLOADS, seed_old_system_mpf
from credflow_assets.resources.drive import FOLDER_MIME, DriveResource
from credflow_assets.therapists import directory, mpf
from credflow_assets.therapists.mpf_audit import (
    FINDING_KINDS,
    audit_mpf,
    audit_therapist,
    repair_mpf,
    therapist_resolver,
)
from credflow_assets.therapists.mpf_audit import snapshot as snapshot_module

LAMB, LAMBERT = "t-1001", "t-1002"
ERIN_NESTED, ERIN_AT_ROOT = "t-1003", "t-1004"
OBRIEN, NUNEZ, SHAWN = "t-1005", "t-1006", "t-1008"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def drive(local_stack) -> DriveResource:
    return DriveResource(api_url=os.environ["CREDFLOW_DRIVE_URL"],
                         token=os.environ["CREDFLOW_DRIVE_TOKEN"])


@pytest.fixture
def root_id(drive):
    """A fresh MPF root per test, deleted (with everything in it) afterwards."""
    root = drive.create_folder(f"mpf-audit-test-{uuid.uuid4().hex[:10]}", None)
    yield root["id"]
    drive.delete_file(root["id"])


@pytest.fixture
def s3(local_stack, credflow_config):
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        region_name=credflow_config.aws.region)


@pytest.fixture
def bucket(s3, credflow_config):
    name = f"mpf-audit-{uuid.uuid4().hex[:12]}"
    ensure_bucket(os.environ["AWS_ENDPOINT_URL"], credflow_config.aws.region, name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for entry in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=entry["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'directory.db'}")
    directory.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(drive, root_id, engine, s3, bucket):
    return seed_old_system_mpf(drive, root_id, engine, s3, bucket)


# -- helpers --------------------------------------------------------------------------------------


def drive_tree(drive: DriveResource, root_id: str) -> dict[str, dict]:
    """Everything under the root, read from Drive: {id: item} with a `depth` added."""
    found: dict[str, dict] = {}
    frontier = [(root_id, 0)]
    while frontier:
        parent, depth = frontier.pop()
        for item in mpf.list_children(drive, parent):
            found[item["id"]] = {**item, "depth": depth}
            if item["mimeType"] == FOLDER_MIME:
                frontier.append((item["id"], depth + 1))
    return found


def frozen(tree: dict[str, dict]) -> set[tuple]:
    return {(i["id"], i["name"], tuple(i.get("parents") or []),
             tuple(sorted((i.get("appProperties") or {}).items()))) for i in tree.values()}


def therapist_of(item: dict) -> str | None:
    return (item.get("appProperties") or {}).get(mpf.THERAPIST_ID)


def add_therapists(engine, *rows: tuple[str, str, str]) -> None:
    with engine.begin() as connection:
        for therapist_id, first, last in rows:
            connection.execute(directory.therapists_table.insert().values(
                id=therapist_id, first_name=first, last_name=last))


def upload(drive, tmp_path, folder_id: str, therapist_id: str, key: str, rendition="original"):
    local = tmp_path / uuid.uuid4().hex
    local.write_text(f"{key} ({rendition})")
    return drive.upload_file(local, key.rsplit("/", 1)[-1], folder_id, mime_type="text/plain",
                             app_properties=mpf.file_properties(therapist_id, key, "etag-1",
                                                                rendition))


def put_upload(s3, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=f"upload {key}".encode())


# -- the seeded old system ------------------------------------------------------------------------


def test_seeded_old_system_has_every_finding_kind_correctly_named(
        drive, root_id, engine, s3, bucket, seeded):
    report = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    kinds = report.by_kind()
    assert [kind for kind in FINDING_KINDS if kinds[kind]] == list(FINDING_KINDS)
    assert not report.is_clean

    # Lamb's files sit in the Lambert folder; Lambert's own files there are not misplaced.
    misplaced = kinds["misplaced_file"]
    assert {(f.owner_id, f.folder_name, f.folder_therapist_id) for f in misplaced} == {
        (LAMB, "Lambert, Nicholas", LAMBERT)}
    assert sorted(f.file_name for f in misplaced) == sorted(UPLOADS)
    assert all(f"therapist {LAMB}" in f.sentence and "'Lambert, Nicholas'" in f.sentence
               for f in misplaced)

    # The nesting dolls, at every depth; the nested Erin Adams is t-1003, not t-1004.
    nested = {" / ".join(f.path): (f.presumed_therapist_id, f.depth)
              for f in kinds["nested_folder"]}
    assert nested == {
        "Abdullah, Katrina / Adams, Erin": (ERIN_NESTED, 1),
        "Abdullah, Katrina / Adams, Erin / Adler, Brooke": ("t-1009", 2),
        "Acosta, Marlou / Abraham, Joel": ("t-1011", 1),
        "Acosta, Marlou / Cunningham, Paul": ("t-1012", 1),
    }
    assert all("nested" in f.sentence for f in kinds["nested_folder"])

    [twins] = kinds["duplicate_folder"]
    assert twins.therapist_id == OBRIEN
    assert twins.folder_names == ("O'Brien, Ann", "O'Brien, Ann")
    tree = drive_tree(drive, root_id)
    assert twins.keeper_id == mpf.oldest_first([tree[i] for i in twins.folder_ids])[0]["id"]

    without_id = {(f.folder_name, f.presumed_therapist_id, dict(f.files_by_owner).get(LAMB))
                  for f in kinds["folder_without_id"]}
    assert without_id == {
        ("Lambert, Nicholas", LAMBERT, 3), ("Abdullah, Katrina", "t-1007", None),
        ("Acosta, Marlou", "t-1010", None), ("Adams, Erin", ERIN_AT_ROOT, None),
        ("Núñez, José", NUNEZ, None),
    }

    # José's CV and all of Shawn Abraham's uploads never reached the MPF.
    missing = {(f.s3_key, f.therapist_has_folder) for f in kinds["missing_file"]}
    assert missing == {(f"{NUNEZ}/cv.txt", True)} | {(f"{SHAWN}/{n}", False) for n in UPLOADS}

    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["counts"] == {kind: len(kinds[kind]) for kind in FINDING_KINDS}
    assert as_json["clean"] is False
    assert {f["kind"] for f in as_json["findings"]} == set(FINDING_KINDS)
    lines = report.summary_lines()
    assert lines[0].startswith(f"MPF audit of root folder {root_id}")
    assert any("Lambert, Nicholas" in line and LAMB in line for line in lines)

    # Seeding again adds nothing.
    again = seed_old_system_mpf(drive, root_id, engine, s3, bucket)
    assert frozen(drive_tree(drive, root_id)) == frozen(tree)
    assert "(0 added, 0 updated)" in again[0] and "(0 added)" in again[1]
    assert "seeded before" in again[2]


def test_audit_therapist_keeps_lamb_and_lambert_and_the_two_erins_apart(
        drive, root_id, seeded):
    def audit(therapist_id):
        return audit_therapist(drive, root_id, therapist_id,
                               expected_s3_keys=[f"{therapist_id}/{n}" for n in UPLOADS])

    lamb, lambert = audit(LAMB).by_kind(), audit(LAMBERT).by_kind()
    assert {f.owner_id for f in lamb["misplaced_file"]} == {LAMB}
    assert len(lamb["misplaced_file"]) == 3
    # Lambert's audit sees the same three files of Lamb's in his (presumed) folder, none of his.
    assert {(f.owner_id, f.folder_therapist_id) for f in lambert["misplaced_file"]} == {
        (LAMB, LAMBERT)}
    assert not lamb["missing_file"] and not lambert["missing_file"]  # in the MPF, if misplaced

    nested_erin, root_erin = audit(ERIN_NESTED).by_kind(), audit(ERIN_AT_ROOT).by_kind()
    assert [" / ".join(f.path) for f in nested_erin["nested_folder"]] == [
        "Abdullah, Katrina / Adams, Erin"]
    assert not nested_erin["folder_without_id"] and not nested_erin["misplaced_file"]
    assert not root_erin["nested_folder"] and not root_erin["misplaced_file"]
    assert [(f.folder_name, f.presumed_therapist_id) for f in root_erin["folder_without_id"]] == [
        ("Adams, Erin", ERIN_AT_ROOT)]

    shawn = audit(SHAWN)
    assert {(f.kind, f.therapist_has_folder) for f in shawn.findings} == {("missing_file", False)}


def test_dry_run_changes_nothing(drive, root_id, engine, s3, bucket, seeded):
    first = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    before = frozen(drive_tree(drive, root_id))
    planned = repair_mpf(drive, root_id, first, resolve_therapist=therapist_resolver(engine),
                         dry_run=True)
    assert planned and {a.status for a in planned} == {"planned"}
    kinds = {a.kind for a in planned}
    assert {"unnest_folder", "merge_folders", "adopt_folder", "move_file", "reprocess"} <= kinds
    assert frozen(drive_tree(drive, root_id)) == before
    second = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    assert second.to_dict() == first.to_dict()
    assert second.findings == first.findings
    # The plan names Lamb's destination as Lamb's own new folder, never Lambert's.
    lamb_moves = [a for a in planned if a.kind == "move_file" and a.therapist_id == LAMB]
    assert len(lamb_moves) == 3
    assert "into a new folder 'Lamb_Nicholas_t-1001'" in lamb_moves[0].sentence
    assert all(a.sentence.endswith("'Lamb_Nicholas_t-1001'") for a in lamb_moves)


def test_repair_puts_every_file_in_its_own_therapists_single_root_folder(
        drive, root_id, engine, s3, bucket, seeded):
    report = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    before = drive_tree(drive, root_id)
    lambert_folder = next(i["id"] for i in before.values() if i["name"] == "Lambert, Nicholas")
    actions = repair_mpf(drive, root_id, report, resolve_therapist=therapist_resolver(engine),
                         dry_run=False)
    assert {a.status for a in actions} <= {"done", "left"}
    assert {a.kind for a in actions if a.status == "left"} == {"reprocess"}

    tree = drive_tree(drive, root_id)
    folders = {i["id"]: i for i in tree.values() if i["mimeType"] == FOLDER_MIME}
    files = [i for i in tree.values() if i["mimeType"] != FOLDER_MIME]
    assert all(f["depth"] == 0 for f in folders.values())  # all direct children of the root
    assert all(therapist_of(f) for f in folders.values())  # no id-less folder left
    folders_of = defaultdict(list)
    for folder in folders.values():
        folders_of[therapist_of(folder)].append(folder)
    holding_files = {therapist_of(f) for f in files}
    assert {t for t, _, _ in THERAPISTS} - {SHAWN} == holding_files == set(folders_of)
    assert all(len(found) == 1 for found in folders_of.values())
    for file in files:  # every file in its own therapist's folder
        assert therapist_of(folders[file["parents"][0]]) == therapist_of(file), file["name"]
    assert len(files) == sum(1 for _ in before.values() if _["mimeType"] != FOLDER_MIME) - 1

    by_therapist = {t: f[0] for t, f in folders_of.items()}
    # Lambert keeps the old folder (adopted, relabelled); Lamb's files moved to a folder of his.
    assert by_therapist[LAMBERT]["id"] == lambert_folder
    assert by_therapist[LAMBERT]["name"] == "Lambert_Nicholas_t-1002"
    assert by_therapist[LAMB]["name"] == "Lamb_Nicholas_t-1001"
    lamb_files = [f for f in files if f["parents"] == [by_therapist[LAMB]["id"]]]
    assert sorted(f["name"] for f in lamb_files) == sorted(UPLOADS)
    assert {f["appProperties"][mpf.S3_KEY] for f in lamb_files} == {
        f"{LAMB}/{n}" for n in UPLOADS}
    # The two Erin Adams: two folders, each with only its own three uploads.
    for erin in (ERIN_NESTED, ERIN_AT_ROOT):
        assert by_therapist[erin]["name"] == f"Adams_Erin_{erin}"
        held = [f for f in files if f["parents"] == [by_therapist[erin]["id"]]]
        assert {f["appProperties"][mpf.S3_KEY] for f in held} == {f"{erin}/{n}" for n in UPLOADS}
    assert by_therapist[NUNEZ]["name"] == "Núñez_José_t-1006"
    # The O'Brien twins merged into the oldest; the license both held is there once.
    obrien = [f for f in files if f["parents"] == [by_therapist[OBRIEN]["id"]]]
    assert sorted(f["name"] for f in obrien) == sorted(UPLOADS)
    assert by_therapist[OBRIEN]["id"] == report.by_kind()["duplicate_folder"][0].keeper_id

    after = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    assert {f.kind for f in after.findings} == {"missing_file"}
    assert len(after.findings) == 4

    # A second repair does nothing.
    settled = frozen(drive_tree(drive, root_id))
    again = repair_mpf(drive, root_id, after, resolve_therapist=therapist_resolver(engine),
                       dry_run=False)
    assert not any(a.changes_drive for a in again)
    assert {a.kind for a in again} == {"reprocess"}
    assert all("re-processed by the next `credflow sync`" in a.sentence for a in again)
    assert frozen(drive_tree(drive, root_id)) == settled


def test_audit_pages_through_listings(drive, root_id, seeded, monkeypatch):
    normal = audit_mpf(drive, root_id)
    pages: list[int] = []
    list_files = DriveResource.list_files

    def small_pages(self, q, fields=mpf.ITEM_FIELDS, order_by=None, page_size=1000):
        pages.append(page_size)
        return list_files(self, q, fields=fields, order_by=order_by, page_size=page_size)

    monkeypatch.setattr(DriveResource, "list_files", small_pages)
    monkeypatch.setattr(snapshot_module, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(snapshot_module, "PARENTS_PER_QUERY", 3)
    paged = audit_mpf(drive, root_id)
    assert set(pages) == {2}
    assert paged.to_dict() == normal.to_dict()
    assert paged.files_checked == normal.files_checked == 33


def test_audit_lists_many_folders_in_few_requests(drive, root_id, tmp_path, monkeypatch):
    owners = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(90)]
    folders = [drive.create_folder(f"Therapist {n}", root_id, {mpf.THERAPIST_ID: owner})
               for n, owner in enumerate(owners)]
    for folder, owner in zip(folders, owners):
        upload(drive, tmp_path, folder["id"], owner, f"{owner}/license.pdf")
    stray = upload(drive, tmp_path, folders[-1]["id"], owners[0], f"{owners[0]}/cv.txt")
    queries: list[str] = []
    list_files = DriveResource.list_files

    def recording(self, q, *args, **kwargs):
        queries.append(q)
        return list_files(self, q, *args, **kwargs)

    monkeypatch.setattr(DriveResource, "list_files", recording)
    report = audit_mpf(drive, root_id)
    assert report.folders_checked == 90 and report.files_checked == 91
    assert [(f.kind, f.file_id) for f in report.findings] == [("misplaced_file", stray["id"])]
    # The root, then the folders' children a few dozen folders per query (each URL < 2 KB).
    assert len(queries) <= 1 + 6


# -- one therapist, missing files, what the repair leaves alone -----------------------------------


def test_audit_therapist_finds_a_misplaced_file_and_a_missing_key_cheaply(
        drive, root_id, engine, tmp_path, monkeypatch):
    mine, other, bystander = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(3))
    add_therapists(engine, (mine, "Nicholas", "Lamb"), (other, "Nicholas", "Lambert"),
                   (bystander, "Erin", "Adams"))
    resolve = therapist_resolver(engine)
    my_folder = mpf.ensure_therapist_folder(drive, root_id, resolve(mine)).folder
    other_folder = mpf.ensure_therapist_folder(drive, root_id, resolve(other)).folder
    bystander_folder = mpf.ensure_therapist_folder(drive, root_id, resolve(bystander)).folder
    upload(drive, tmp_path, my_folder["id"], mine, f"{mine}/license.pdf")
    stray = upload(drive, tmp_path, other_folder["id"], mine, f"{mine}/cv.txt")
    intruder = upload(drive, tmp_path, my_folder["id"], other, f"{other}/photo.png")
    for n in range(25):
        upload(drive, tmp_path, bystander_folder["id"], bystander, f"{bystander}/{n}.txt")

    queries: list[str] = []
    list_files = DriveResource.list_files

    def recording(self, q, *args, **kwargs):
        queries.append(q)
        return list_files(self, q, *args, **kwargs)

    monkeypatch.setattr(DriveResource, "list_files", recording)
    expected = [f"{mine}/license.pdf", f"{mine}/cv.txt", f"{mine}/never-arrived.pdf"]
    report = audit_therapist(drive, root_id, mine, expected_s3_keys=expected)
    monkeypatch.undo()

    kinds = report.by_kind()
    assert {(f.file_id, f.owner_id, f.folder_id) for f in kinds["misplaced_file"]} == {
        (stray["id"], mine, other_folder["id"]),  # my file in Lambert's folder
        (intruder["id"], other, my_folder["id"]),  # Lambert's file in mine
    }
    [missing] = kinds["missing_file"]
    assert (missing.s3_key, missing.folder_id) == (f"{mine}/never-arrived.pdf", my_folder["id"])
    assert not kinds["nested_folder"] and not kinds["duplicate_folder"]
    # O(this therapist's files): the bystander's folder of 25 files is never listed.
    assert not any(bystander_folder["id"] in q for q in queries)
    assert len(queries) <= 4

    actions = repair_mpf(drive, root_id, report, resolve_therapist=resolve, dry_run=False)
    assert [a.kind for a in actions].count("move_file") == 2
    assert drive.get_file(stray["id"])["parents"] == [my_folder["id"]]
    assert drive.get_file(intruder["id"])["parents"] == [other_folder["id"]]
    after = audit_therapist(drive, root_id, mine, expected_s3_keys=expected)
    assert [f.kind for f in after.findings] == ["missing_file"]


def test_missing_file_when_an_upload_never_reached_the_mpf(
        drive, root_id, engine, s3, bucket, tmp_path):
    placed, absent = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    add_therapists(engine, (placed, "Ann", "O'Brien"), (absent, "José", "Núñez"))
    for key in (f"{placed}/license.pdf", f"{placed}/cv.txt", f"{absent}/license.pdf"):
        put_upload(s3, bucket, key)
    folder = mpf.ensure_therapist_folder(drive, root_id, therapist_resolver(engine)(placed)).folder
    assert folder["name"] == f"O'Brien_Ann_{placed}"
    upload(drive, tmp_path, folder["id"], placed, f"{placed}/license.pdf")
    # Only a PDF rendition of the CV: the original is what counts.
    upload(drive, tmp_path, folder["id"], placed, f"{placed}/cv.txt", rendition="pdf")

    report = audit_mpf(drive, root_id, s3_client=s3, signup_bucket=bucket)
    assert report.s3_keys_checked == 3
    assert {(f.kind, f.s3_key, f.folder_id) for f in report.findings} == {
        ("missing_file", f"{placed}/cv.txt", folder["id"]),
        ("missing_file", f"{absent}/license.pdf", None),
    }
    assert any(f"therapist {absent} has no folder in the MPF at all" in f.sentence
               for f in report.findings)
    before = frozen(drive_tree(drive, root_id))
    actions = repair_mpf(drive, root_id, report, resolve_therapist=therapist_resolver(engine),
                         dry_run=False)
    assert [(a.kind, a.status) for a in actions] == [("reprocess", "left")] * 2
    assert frozen(drive_tree(drive, root_id)) == before


def test_repair_never_deletes_a_folder_that_still_holds_something(
        drive, root_id, engine, tmp_path):
    known, unknown = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    add_therapists(engine, (known, "Brooke", "Adler"))
    notes = drive.create_folder("Adler, Brooke", root_id)  # old system: no id
    upload(drive, tmp_path, notes["id"], known, f"{known}/license.pdf")
    loose = tmp_path / "notes.txt"
    loose.write_text("call back on Monday")
    drive.upload_file(loose, "notes.txt", notes["id"], mime_type="text/plain")  # no id at all
    mixed = drive.create_folder("Cunningham, Paul", root_id)
    upload(drive, tmp_path, mixed["id"], known, f"{known}/cv.txt")
    stranger = upload(drive, tmp_path, mixed["id"], unknown, f"{unknown}/cv.txt")

    report = audit_mpf(drive, root_id)
    actions = repair_mpf(drive, root_id, report, resolve_therapist=therapist_resolver(engine),
                         dry_run=False)
    tree = drive_tree(drive, root_id)
    # Both id-less folders still hold something, so both are kept; the known files moved out.
    assert notes["id"] in tree and mixed["id"] in tree
    assert [tree[i]["name"] for i in tree if tree[i]["parents"] == [notes["id"]]] == ["notes.txt"]
    assert tree[stranger["id"]]["parents"] == [mixed["id"]]
    [adler] = mpf.find_therapist_folders(drive, root_id, known)
    assert sorted(tree[i]["name"] for i in tree if tree[i]["parents"] == [adler["id"]]) == [
        "cv.txt", "license.pdf"]
    left = [a for a in actions if a.status == "left"]
    assert any(unknown in a.sentence and "not in the therapist directory" in a.sentence
               for a in left)
    assert {a.item_id for a in left if a.kind == "leave" and a.item_id in (notes["id"],
                                                                           mixed["id"])} == {
        notes["id"], mixed["id"]}
    # Running it again changes nothing.
    settled = frozen(tree)
    again = repair_mpf(drive, root_id, audit_mpf(drive, root_id),
                       resolve_therapist=therapist_resolver(engine), dry_run=False)
    assert not any(a.changes_drive for a in again)
    assert frozen(drive_tree(drive, root_id)) == settled
