"""Malformed inbound files, end to end: what the person who uploaded one sees, and what is left.

One sync, on a stack of its own, processes every file of the matrix at once (a run each): CSVs
in Windows-1252, with a byte-order mark, with CRLF or CR line ends, empty, header only, with
empty unnamed columns, with a NUL byte, with a 1 MB cell, with its line breaks lost (one 5 MB
line), separated by semicolons, in UTF-16, without a header, in no known encoding; XLSX
workbooks with an empty second sheet and with data on two sheets; and a file with a rejected
row. For each: the rows in the table (or none), the notes on what was not read, or the run's
error as one sentence naming the file, the problem and what to do: no exception class, no
stack trace, no cell value. For all of them: nothing left in the instance's storage or the
temp directory, and no cell of any file in the Dagster instance (event log, runs, logs), the
failure webhook or the parse logs.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import dagster as dg
import openpyxl
import pytest

from credflow_assets.drive_feeds.downloads import DOWNLOADS_DIR, LEGACY_DIR
from credflow_assets.drive_feeds.names import job_name, records_key
from credflow_assets.local.seed_drive_feeds import (
    columns_of,
    header_for,
    sample_rows,
    write_csv,
)
from credflow_assets.common.parse_logs import list_logs, read_log
from credflow_assets.resources.drive import DriveResource
from credflow_assets_tests import test_drive_feeds as end_to_end
from credflow_assets_tests.test_drive_feeds import (
    check_evaluations,
    key_of,
    materialization,
    outcome,
    rows_by_id,
    run_sync,
    summary_of,
    upload,
)

# The end-to-end module's fixtures: module-scoped, so this module runs a stack of its own.
flow, webhook = end_to_end.flow, end_to_end.webhook

FEED = "nsss"
# In a cell of every row of every file: it may reach the feed's table and the outbound summary,
# nothing else.
MARK = "Qzmark"
ROWS = 3
FIVE_MB = 5 << 20


@dataclass(frozen=True)
class Case:
    name: str
    # (the feed's config, the file's rows) → the file's bytes
    content: Callable[[object, list[dict]], bytes]
    rows_in: int = 0  # rows that reach the table
    note: str | None = None  # a note of the summary, when the file goes in
    problem: tuple[str, ...] = ()  # fragments of the run's error, when it fails


def _csv(config, rows: list[dict], *, header: bool = True, line_end: str = "\n",
         columns_after: int = 0) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=line_end)
    columns = columns_of(config)
    if header:
        writer.writerow([header_for(column) for column in columns] + [""] * columns_after)
    for row in rows:
        writer.writerow([row[column] for column in columns] + [""] * columns_after)
    return out.getvalue()


def _utf8(config, rows, **options) -> bytes:
    return _csv(config, rows, **options).encode()


def _windows_1252(config, rows) -> bytes:
    for row in rows:
        row["last_name"] = "Müller"
    return _csv(config, rows).encode("cp1252")


def _nul_in_row_3(config, rows) -> bytes:
    rows[1]["first_name"] = "Ben\0"  # column C
    return _utf8(config, rows)


def _huge_cell_in_row_4(config, rows) -> bytes:
    rows[2]["address_line_2"] = MARK * ((1 << 20) // len(MARK))  # 1 MB
    return _utf8(config, rows)


def _line_breaks_lost(config, rows) -> bytes:
    """One 5 MB line: the header and the rows run together, as when line ends are lost."""
    lines = _csv(config, rows).splitlines()
    many = lines[:1] + lines[1:] * (FIVE_MB // sum(map(len, lines)) + 1)
    return " ".join(many).encode()


def _not_text(config, rows) -> bytes:
    # 0x81 is neither UTF-8 on its own nor a Windows-1252 character.
    return _utf8(config, rows).replace(MARK.encode(), MARK.encode() + b"\x81", 1)


def _rejected_email(config, rows) -> bytes:
    rows[0]["email"] = f"{MARK} has no at sign"
    return _utf8(config, rows)


def _workbook(config, rows, *, second: list[list] | None) -> bytes:
    workbook = openpyxl.Workbook()
    members = workbook.active
    members.title = "Members"
    columns = columns_of(config)
    members.append([header_for(column) for column in columns])
    for row in rows:
        members.append([row[column] for column in columns])
    other = workbook.create_sheet("Notes" if second else "Sheet2")
    for line in second or []:
        other.append(line)
    if not second:
        other["B2"] = "   "  # only spaces: no data
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


CASES = [
    Case("windows-1252.csv", _windows_1252, rows_in=ROWS,
         note="read as Windows-1252 text: the file is not UTF-8 (from byte "),
    Case("byte-order mark.csv", lambda c, r: b"\xef\xbb\xbf" + _utf8(c, r), rows_in=ROWS),
    Case("crlf.csv", lambda c, r: _utf8(c, r, line_end="\r\n"), rows_in=ROWS),
    Case("cr.csv", lambda c, r: _utf8(c, r, line_end="\r"), rows_in=ROWS),
    Case("header only.csv", lambda c, r: _utf8(c, []), rows_in=0),
    Case("empty columns.csv", lambda c, r: _utf8(c, r, columns_after=2), rows_in=ROWS,
         note="2 columns without a header and without values not read: M to N"),
    Case("second sheet empty.xlsx", lambda c, r: _workbook(c, r, second=None), rows_in=ROWS,
         note="sheet 'Members' read; 1 other sheet not read, having no data: Sheet2"),
    Case("rejected row.csv", _rejected_email, rows_in=ROWS - 1),
    Case("empty.csv", lambda c, r: b"",
         problem=("the file is empty (0 bytes)", "upload the sheet again")),
    Case("nul byte.csv", _nul_in_row_3,
         problem=("row 3, column C holds a NUL character", "save it as 'CSV UTF-8'")),
    Case("1 MB cell.csv", _huge_cell_in_row_4,
         problem=("malformed CSV: row 4 is more than 256 KiB long", "check the file")),
    Case("one 5 MB line.csv", _line_breaks_lost,
         problem=("row 1 is not the header: it has ", "cells for the feed's 12 columns",
                  "are the file's line breaks missing?", "put the column names alone in row 1")),
    Case("semicolons.csv", lambda c, r: _utf8(c, r).replace(b",", b";"),
         problem=("row 1 reads as 1 column, 'NSS ID;NHS Number;First Name;",
                  "separates its columns with semicolons (;), not commas",
                  "save it as 'CSV UTF-8 (comma delimited)'")),
    Case("utf-16.csv", lambda c, r: _csv(c, r).encode("utf-16"),
         problem=("the file is UTF-16 text", "save it as 'CSV UTF-8'")),
    Case("no header.csv", lambda c, r: _utf8(c, r, header=False),
         problem=("row 1 is not the header: none of its 12 cells is one of the feed's columns",
                  "put the column names in row 1")),
    Case("not text.csv", _not_text,
         problem=("the file is not UTF-8 text (at byte ", "nor Windows-1252",
                  "save it as 'CSV UTF-8'")),
    Case("two sheets.xlsx",
         lambda c, r: _workbook(c, r, second=[[f"{MARK}: call back on Tuesday"]]),
         problem=("the workbook has data on 2 sheets (Members, Notes)",
                  "keep the feed's rows on one sheet")),
]


def _rows_of(config, index: int) -> list[dict]:
    rows = sample_rows(config, ROWS, start=50_000 + 100 * index)
    for row in rows:
        row["address_line_2"] = f"{MARK} flat"
    return rows


@pytest.fixture(scope="module")
def matrix(flow, tmp_path_factory):
    """Every case uploaded, then one sync, with the temp directory pointed at an empty one."""
    config = flow["feeds"][FEED]
    # The failure notifier's first tick only starts its cursor: it tells the failures after it.
    run_sync(flow)
    work = tmp_path_factory.mktemp("malformed")
    scratch = work / "tmp"
    scratch.mkdir()
    cases = {}
    for index, case in enumerate(CASES):
        rows = _rows_of(config, index)
        path = work / case.name
        path.write_bytes(case.content(config, rows))
        cases[case.name] = {"case": case, "rows": rows, "file": upload(flow, FEED, path)}
    received_before = len(flow["webhook"].received)
    saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        report = run_sync(flow)
    finally:
        tempfile.tempdir = saved
    # The notifier tells at most 5 failed runs a tick (Dagster's run-status sensor limit), and
    # sync ticks it once: later syncs tell the rest.
    failures = sum(1 for case in CASES if case.problem)
    for _ in range(failures // 5 + 1):
        if len(flow["webhook"].received) - received_before >= failures:
            break
        run_sync(flow)
    return {"cases": cases, "report": report, "scratch": scratch,
            "messages": flow["webhook"].received[received_before:]}


def _label(file: dict) -> str:
    return (f"feed {FEED}: file {file['name']!r} (Drive id {file['id']}, revision "
            f"{file['md5Checksum']})")


@pytest.mark.parametrize("name", [case.name for case in CASES if not case.problem])
def test_a_readable_file_goes_in_and_says_what_it_did_not_read(flow, matrix, name, tmp_path):
    entry = matrix["cases"][name]
    case, file, rows = entry["case"], entry["file"], entry["rows"]
    config = flow["feeds"][FEED]

    run = outcome(matrix["report"], FEED, file)

    assert run.success, run.error
    stored = rows_by_id(flow, FEED, [row[config.id_column] for row in rows])
    assert len(stored) == case.rows_in
    for row in stored.values():
        assert row["address_line_2"] == f"{MARK} flat"
        assert not any("\r" in value for value in row.values() if isinstance(value, str))
    if name == "windows-1252.csv":
        assert {row["last_name"] for row in stored.values()} == {"Müller"}
    _summary, parsed = summary_of(flow, FEED, file, tmp_path)
    assert parsed["counts"]["rows read"] == (0 if name == "header only.csv" else ROWS)
    metadata = materialization(flow, records_key(FEED), key_of(FEED, file)).metadata
    if case.note:
        [note] = parsed["notes"]
        assert note.startswith(case.note)
        assert metadata["notes"].value == parsed["notes"]
    else:
        assert parsed["notes"] == [] and metadata["notes"].value == []


@pytest.mark.parametrize("name", [case.name for case in CASES if case.problem])
def test_a_malformed_file_fails_whole_with_a_sentence_a_person_can_act_on(flow, matrix, name):
    entry = matrix["cases"][name]
    case, file, rows = entry["case"], entry["file"], entry["rows"]
    config = flow["feeds"][FEED]

    run = outcome(matrix["report"], FEED, file)

    assert not run.success
    assert run.error.startswith(_label(file) + ": ")
    assert run.error.endswith("; nothing written")
    for fragment in case.problem:
        assert fragment in run.error
    assert not re.search(r"[A-Za-z]+(Error|Exception)\b|Traceback|\n", run.error), run.error
    assert MARK not in run.error and "Ben" not in run.error
    assert rows_by_id(flow, FEED, [row[config.id_column] for row in rows]) == {}
    [evaluation] = check_evaluations(flow, run.run_id)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert MARK not in evaluation.description
    # The failure webhook tells the same sentence.
    [message] = [m for m in matrix["messages"] if key_of(FEED, file) in m["body"]["text"]]
    assert case.problem[0] in message["body"]["text"]


def test_nothing_is_left_on_disk(flow, matrix):
    storage = Path(flow["instance"].storage_directory())
    assert [run.success for run in matrix["report"].runs].count(False) == sum(
        1 for case in CASES if case.problem)
    downloads = storage / DOWNLOADS_DIR
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert not (storage / LEGACY_DIR).exists()
    assert list(matrix["scratch"].iterdir()) == []


def test_no_cell_reaches_the_instance_the_webhook_or_the_parse_logs(flow, matrix):
    """The mark is in every row of every file, and in the rejected row's value: Dagster's
    storage (event log, run records, compute logs, outputs) holds none of it."""
    home = Path(flow["instance"].root_directory)
    contents = [(path, path.read_bytes()) for path in home.rglob("*") if path.is_file()]
    assert any(b"rejected row.csv" in content for _, content in contents)  # the search sees
    marks = (MARK.encode(), "Müller".encode(), "Müller".encode("cp1252"))
    holding = [str(path.relative_to(home)) for path, content in contents
               if any(mark in content for mark in marks)]
    assert holding == []
    assert not any(MARK in str(message) for message in matrix["messages"])
    client = boto3.client("s3")  # the stack's, by the environment running_stack exported
    bucket = flow["config"].buckets.logs
    logs = [read_log(client, bucket, stored["key"])
            for entry in matrix["cases"].values()
            for stored in list_logs(client, bucket, key_of(FEED, entry["file"]), "drive_feeds")]
    assert len(logs) == len(CASES)
    assert not any(MARK in log or "Müller" in log for log in logs)


def _fake_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name=job_name(FEED), run_id=run_id, status=status))
    return run_id


def test_a_later_run_removes_downloads_of_runs_that_are_over_never_a_running_ones(
        flow, matrix, tmp_path):
    """A run killed mid-ingest leaves its download behind; the next run removes it once the
    instance says that run is over (or no longer has it), and leaves a running one's alone."""
    instance = flow["instance"]
    storage = Path(instance.storage_directory())
    failed = _fake_run(instance, dg.DagsterRunStatus.FAILURE)
    running = _fake_run(instance, dg.DagsterRunStatus.STARTED)
    deleted = str(uuid.uuid4())
    leftovers = [storage / DOWNLOADS_DIR / run_id for run_id in (failed, running, deleted)]
    leftovers.append(storage / LEGACY_DIR / FEED / "an-old-file-id" / "an-old-revision")
    for directory in leftovers:
        directory.mkdir(parents=True)
        (directory / "source.csv").write_text(f"NSS ID\n{MARK}\n")
    config = flow["feeds"][FEED]
    file = upload(flow, FEED, write_csv(tmp_path / "after a crash.csv", config,
                                        sample_rows(config, 2, start=60_000)))
    try:
        assert outcome(run_sync(flow), FEED, file).success
        assert [path.name for path in (storage / DOWNLOADS_DIR).iterdir()] == [running]
        assert not (storage / LEGACY_DIR).exists()
    finally:
        shutil.rmtree(storage / DOWNLOADS_DIR / running, ignore_errors=True)
        instance.delete_run(running)
        instance.delete_run(failed)


def test_a_revision_replaced_during_its_download_leaves_nothing(flow, matrix, tmp_path,
                                                                monkeypatch):
    """Drive listed one revision and served the next: that content is another partition's to
    read, so this run neither reads nor keeps it."""
    config = flow["feeds"][FEED]
    file = upload(flow, FEED, write_csv(tmp_path / "v1.csv", config,
                                        sample_rows(config, 2, start=61_000)))
    newer = write_csv(tmp_path / "v2.csv", config, sample_rows(config, 2, start=61_000, variant=1))
    download_file = DriveResource.download_file

    def replaced_first(drive, file_id, *args, **kwargs):
        if file_id == file["id"]:
            flow["drive"].update_file(file_id, local_path=newer, mime_type="text/csv")
        return download_file(drive, file_id, *args, **kwargs)

    monkeypatch.setattr(DriveResource, "download_file", replaced_first)
    report = run_sync(flow)
    monkeypatch.undo()

    assert outcome(report, FEED, file).success
    metadata = materialization(flow, records_key(FEED), key_of(FEED, file)).metadata
    assert metadata["skipped"].value.startswith("superseded by revision")
    downloads = Path(flow["instance"].storage_directory()) / DOWNLOADS_DIR
    assert list(downloads.iterdir()) == []


def test_an_unexpected_error_is_told_without_its_message(flow, matrix, tmp_path, monkeypatch):
    """A database error quotes the value it refused, SQLAlchemy the statement's parameters:
    the run says what to do, and the log where it stopped, neither what the error said."""
    import sqlalchemy as sa

    from credflow_assets.drive_feeds import ingest

    secret = "Qzinternal"

    def refused(*args, **kwargs):
        raise sa.exc.IntegrityError("INSERT INTO nsss_records ...", {"last_name": secret},
                                    ValueError(f'duplicate key value "{secret}"'))

    monkeypatch.setattr(ingest, "ingest_file", refused)
    config = flow["feeds"][FEED]
    file = upload(flow, FEED, write_csv(tmp_path / "internal.csv", config,
                                        sample_rows(config, 2, start=62_000)))

    run = outcome(run_sync(flow), FEED, file)

    assert not run.success
    assert run.error == (f"{_label(file)}: the ingest stopped on an internal error, not on a "
                         "problem it knows in the file; nothing was written. Run it again; if "
                         "it fails again, the run's log shows the maintainers where it stopped")
    logged = [event.user_message for event in flow["instance"].all_logs(run.run_id)]
    assert any("sqlalchemy.exc.IntegrityError" in message and "in refused" in message
               for message in logged)
    home = Path(flow["instance"].root_directory)
    assert not [path for path in home.rglob("*")
                if path.is_file() and secret.encode() in path.read_bytes()]
