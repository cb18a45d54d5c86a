"""Provider feeds' pure parts: safe extraction, bomb limits, type detection, streaming
decompression, CSV record counts, the check of a step's own download, names, retry rules, and the
definitions the flow adds for the providers in the config."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from credflow_assets import provider_feeds
from credflow_assets.config import CredflowConfig
from credflow_assets.local.seed_provider_feeds import members_csv, minimal_pdf, roster_xml
from credflow_assets.provider_feeds.failures import FileRef, file_failure, is_transient
from credflow_assets.provider_feeds.names import (
    RemoteIdentity,
    parse_partition_key,
    partition_key,
    raw_keys,
)
from credflow_assets.provider_feeds.raw_file import local_raw_file
from credflow_assets.provider_feeds.rows import CsvRecordCounter
from credflow_assets.provider_feeds.sensors import FeedCursor
from credflow_assets.provider_feeds.streams import UploadSource, gunzip_chunks, single_file_name
from credflow_assets.provider_feeds.limits import ExpansionLimit, human_size
from credflow_assets.provider_feeds.unpack import (
    CorruptArchive,
    ExtractionLimitExceeded,
    UnsafeMember,
    count_csv_rows,
    decrypted_name,
    detect_type,
    looks_encrypted,
    unpack,
)
from credflow_assets.common.partitions import is_valid_partition_key
from credflow_assets_tests.conftest import DEFAULT_CONFIG

MiB = 1024 * 1024


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tar_bytes(*members: tarfile.TarInfo | tuple[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def contents(files) -> dict[str, bytes]:
    return {f.name: f.path.read_bytes() for f in files}


# ------------------------------------------------------------------------------ unpacking


def test_gzip_tar_gz_zip_and_plain_files_unpack_to_their_contents(tmp_path):
    csv_bytes = members_csv(20)
    found, files = unpack(write(tmp_path / "a.csv.gz", gzip.compress(csv_bytes)), "a.csv.gz",
                          tmp_path / "out1", limit=ExpansionLimit(MiB))
    assert found == "gzip" and contents(files) == {"a.csv": csv_bytes}

    archive = tar_bytes(("x/one.csv", b"a,b\n1,2\n"), ("./two.pdf", minimal_pdf("t")),
                        special("x", tarfile.DIRTYPE))
    for name in ("bundle.tar.gz", "bundle.tgz", "bundle.bin"):  # content decides, not only names
        found, files = unpack(write(tmp_path / name, archive), name, tmp_path / f"o-{name}",
                              limit=ExpansionLimit(MiB))
        assert found == "tar.gz"
        assert contents(files) == {"x/one.csv": b"a,b\n1,2\n", "two.pdf": minimal_pdf("t")}

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive_zip:
        archive_zip.writestr("docs/roster.xml", roster_xml())
        archive_zip.writestr("docs/", "")
    found, files = unpack(write(tmp_path / "d.zip", buffer.getvalue()), "d.zip", tmp_path / "o3",
                          limit=ExpansionLimit(MiB))
    assert found == "zip" and contents(files) == {"docs/roster.xml": roster_xml()}

    plain = write(tmp_path / "r.xml", roster_xml())
    # A file that is not compressed is not expanded: no limit applies to it.
    found, files = unpack(plain, "r.xml", tmp_path / "o4", limit=ExpansionLimit(10))
    assert found == "none" and files[0].path == plain


@pytest.mark.parametrize("member, words", [
    (("../escape.csv", b"x"), "'../escape.csv' refused: '..'"),
    (("a/../../escape.csv", b"x"), "'a/../../escape.csv' refused: '..'"),
    (("/etc/cron.d/evil", b"x"), "'/etc/cron.d/evil' refused: absolute path"),
    (("C:\\evil.csv", b"x"), "absolute path"),
    (special("link.csv", tarfile.SYMTYPE, "/etc/passwd"), "'link.csv' refused: a symbolic link"),
    (special("hard.csv", tarfile.LNKTYPE, "ok.csv"), "'hard.csv' refused: a hard link"),
    (special("dev", tarfile.CHRTYPE), "'dev' refused: a device file"),
    (special("blk", tarfile.BLKTYPE), "'blk' refused: a device file"),
    (special("pipe", tarfile.FIFOTYPE), "'pipe' refused: a FIFO"),
])
def test_unsafe_tar_members_are_refused_by_name_and_nothing_escapes(tmp_path, member, words):
    target = tmp_path / "work" / "out"
    archive = write(tmp_path / "work" / "a.tar.gz", tar_bytes(("ok.csv", b"a\n1\n"), member))
    with pytest.raises(UnsafeMember) as caught:
        unpack(archive, "a.tar.gz", target, limit=ExpansionLimit(MiB))
    assert words in str(caught.value)
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert not any("escape" in n or "evil" in n or "passwd" in n for n in names), names
    assert {p.parent for p in tmp_path.rglob("*") if p.is_file()} <= {target, archive.parent}


def test_unsafe_zip_members_are_refused(tmp_path):
    for name, words in (("../../escape.csv", "'..'"), ("/abs.csv", "absolute path")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, b"x")
        with pytest.raises(UnsafeMember, match=words):
            unpack(write(tmp_path / "z.zip", buffer.getvalue()), "z.zip", tmp_path / "o",
                   limit=ExpansionLimit(MiB))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link.csv")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeMember, match="'link.csv' refused: a symbolic link"):
        unpack(write(tmp_path / "l.zip", buffer.getvalue()), "l.zip", tmp_path / "o2",
               limit=ExpansionLimit(MiB))
    assert not (tmp_path.parent / "escape.csv").exists()


def test_duplicate_member_names_are_refused(tmp_path):
    archive = write(tmp_path / "d.tar.gz", tar_bytes(("a.csv", b"1"), ("./a.csv", b"2")))
    with pytest.raises(UnsafeMember, match="appears twice"):
        unpack(archive, "d.tar.gz", tmp_path / "o", limit=ExpansionLimit(MiB))


def test_decompression_bombs_stop_at_the_limit_before_writing_past_it(tmp_path):
    bomb = write(tmp_path / "bomb.csv.gz", gzip.compress(bytes(8 * MiB), compresslevel=9))
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(ExtractionLimitExceeded) as refused:
        unpack(bomb, "bomb.csv.gz", tmp_path / "o1", limit=ExpansionLimit(2 * MiB))
    assert str(refused.value) == (
        "the decompressed content of bomb.csv.gz passed 2 MB (max_extracted_bytes); refused, "
        "nothing landed. A decompression bomb, or, if the file is genuine, raise the "
        "provider's max_extracted_bytes")
    assert sum(p.stat().st_size for p in (tmp_path / "o1").iterdir()) <= 2 * MiB

    tar_bomb = write(tmp_path / "t.tar.gz", tar_bytes(("zeros.csv", bytes(8 * MiB))))
    with pytest.raises(ExtractionLimitExceeded, match=r"archive member 'zeros.csv' of t.tar.gz "
                       r"\(8 MB by its header\) takes the extracted content past 2 MB "
                       r"\(max_extracted_bytes\); refused"):
        unpack(tar_bomb, "t.tar.gz", tmp_path / "o2", limit=ExpansionLimit(2 * MiB))
    assert sum(p.stat().st_size for p in (tmp_path / "o2").iterdir()) <= 2 * MiB

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(3):
            archive.writestr(f"z{index}.csv", bytes(MiB))
    with pytest.raises(ExtractionLimitExceeded, match=r"archive member 'z2.csv' of b.zip "
                       r"\(1 MB by its header\) takes the extracted content past 2.5 MB"):
        unpack(write(tmp_path / "b.zip", buffer.getvalue()), "b.zip", tmp_path / "o3",
               limit=ExpansionLimit(int(2.5 * MiB)))
    assert sum(p.stat().st_size for p in (tmp_path / "o3").iterdir()) <= 2.5 * MiB


def test_the_expansion_ratio_refuses_what_grows_too_many_times_its_size(tmp_path):
    """8 MiB of zeros gzip to ~8 KB: a thousand times. A CSV of random values (3-10 times
    as gzip) and any file within the first MiB pass."""
    bomb = write(tmp_path / "bomb.csv.gz", gzip.compress(bytes(8 * MiB), compresslevel=9))
    received = bomb.stat().st_size
    limit = ExpansionLimit(10 * 1024**3, 200, received_bytes=received)
    assert limit.max_bytes == max(MiB, 200 * received)
    with pytest.raises(ExtractionLimitExceeded) as refused:
        list(gunzip_chunks(bomb, "bomb.csv.gz", limit=limit))
    assert str(refused.value) == (
        f"the decompressed content of bomb.csv.gz passed {human_size(200 * received)} "
        f"(max_expansion_ratio: 200 times the {human_size(received)} received); refused, "
        "nothing landed. A decompression bomb, or, if the file is genuine, raise the "
        "provider's max_expansion_ratio")
    tiny_bomb = write(tmp_path / "tiny.gz", gzip.compress(bytes(2 * MiB), compresslevel=9))
    with pytest.raises(ExtractionLimitExceeded, match=r"passed 1 MB \(max_expansion_ratio: 200 "
                       r"times the \S+ KB received, at least 1 MB\)"):
        list(gunzip_chunks(tiny_bomb, "tiny.gz", limit=ExpansionLimit(
            10 * 1024**3, 200, received_bytes=tiny_bomb.stat().st_size)))

    genuine = members_csv(60000)
    packed = write(tmp_path / "m.csv.gz", gzip.compress(genuine))
    assert len(genuine) > 2 * MiB and len(genuine) / packed.stat().st_size < 20
    assert b"".join(gunzip_chunks(packed, "m.csv.gz", limit=ExpansionLimit(
        10 * 1024**3, 200, received_bytes=packed.stat().st_size))) == genuine
    tiny = write(tmp_path / "t.tar.gz", tar_bytes(("a.csv", b"id\n1\n")))  # mostly padding
    found, files = unpack(tiny, "t.tar.gz", tmp_path / "o", limit=ExpansionLimit(
        10 * 1024**3, 200, received_bytes=tiny.stat().st_size))
    assert found == "tar.gz" and contents(files) == {"a.csv": b"id\n1\n"}


def test_truncated_and_corrupt_archives_fail_clearly(tmp_path):
    data = gzip.compress(os.urandom(256 * 1024))
    truncated = write(tmp_path / "t.csv.gz", data[: len(data) // 2])
    with pytest.raises(CorruptArchive, match="t.csv.gz: truncated compressed data"):
        unpack(truncated, "t.csv.gz", tmp_path / "o1", limit=ExpansionLimit(10 * MiB))
    with pytest.raises(CorruptArchive, match="not.gz"):
        unpack(write(tmp_path / "not.gz", b"plain text"), "not.gz", tmp_path / "o2",
               limit=ExpansionLimit(MiB))
    with pytest.raises(CorruptArchive):
        unpack(write(tmp_path / "bad.zip", b"PK\x03\x04 broken"), "bad.zip", tmp_path / "o3",
               limit=ExpansionLimit(MiB))


# ------------------------------------------------------------------------------ detection


def test_types_are_detected_from_content_and_extension(tmp_path):
    cases = {
        "members.csv": (members_csv(3), "csv"),
        "scan.pdf": (minimal_pdf("x"), "pdf"),
        "scan_without_extension": (minimal_pdf("x"), "pdf"),
        "mislabelled.csv": (minimal_pdf("x"), "pdf"),
        "roster.xml": (roster_xml(), "xml"),
        "roster.dat": (roster_xml(), "xml"),
        "fake.pdf": (b"not a pdf at all", "other"),
        "binary.csv": (b"\x00\x01\x02" * 100, "other"),
        "notes.txt": (b"just some notes, with a comma\n", "other"),
    }
    for name, (data, expected) in cases.items():
        assert detect_type(write(tmp_path / name, data), name) == expected, name


def test_csv_rows_are_counted_streaming_with_quoted_line_breaks(tmp_path):
    path = write(tmp_path / "m.csv", members_csv(250))
    assert members_csv(250).count(b"\n") == 252  # one note holds a line break
    assert count_csv_rows(path) == (250, None)
    # No field size limit: a 200 KB field (past csv.reader's default limit) is one field.
    huge_field = write(tmp_path / "h.csv", b"a,b\n1," + b"x" * 200_000 + b"\n2,3\n")
    assert count_csv_rows(huge_field) == (2, None)


CSV_CASES = [
    b"",
    b"\n",
    b"id\n1\n2",
    b"id\r\n1\r\n2\r\n",
    b"id\r1\r2\r",  # old Mac line ends
    b"id,name\n1,\"Lamb, Nicholas\"\n2,\"a\nquoted\r\nbreak\"\n",
    b"id,height\n1,5'10\"\n2,6'1\"\n3,5'2\"\n",  # a quote inside a field opens nothing
    b"a,\"he said \"\"hi\"\"\nthen left\"\n2,\"\"\n",  # escaped quotes and an empty field
    b"a,\"closed\"then text\"\nb\n",  # text after a closing quote: later quotes are literal
    b"a, \"spaced\nquote\"\nb\n",  # a space before the quote: not a quoted field
    b"a\n\n\nb\n",  # blank lines are records too
    b"a,\"never closed\nb\nc\n",  # ends inside a quoted field
]


@pytest.mark.parametrize("data", CSV_CASES)
def test_csv_records_are_counted_as_csv_reader_counts_them_whatever_the_chunks(data):
    expected = sum(1 for _ in csv.reader(io.TextIOWrapper(io.BytesIO(data), newline="")))
    for size in (1, 2, 3, 5, 8, len(data) or 1):
        counter = CsvRecordCounter()
        for start in range(0, len(data), size):
            counter.feed(data[start:start + size])
        assert counter.records == expected, (size, data)
        assert counter.data_rows == max(expected - 1, 0)
    unterminated = data == CSV_CASES[-1]
    assert (counter.note is not None) == unterminated, counter.note


def test_a_gzip_file_streams_every_member_and_fails_like_unpack(tmp_path):
    body = members_csv(300)
    members = write(tmp_path / "m.csv.gz", gzip.compress(body[:999]) + gzip.compress(body[999:])
                    + bytes(512))  # two members, then zero padding, as gunzip accepts
    assert b"".join(gunzip_chunks(members, "m.csv.gz", limit=ExpansionLimit(MiB))) == body
    assert single_file_name(members, "m.csv.gz") == ("gzip", "m.csv")
    assert single_file_name(write(tmp_path / "x.xml", roster_xml()), "x.xml") == ("none", "x.xml")
    archive = write(tmp_path / "b.bin", tar_bytes(("a.csv", b"a\n1\n")))
    assert single_file_name(archive, "b.bin") is None  # a tar.gz, whatever its name
    assert single_file_name(write(tmp_path / "z.zip", b"PK\x03\x04"), "z.zip") is None

    data = gzip.compress(os.urandom(256 * 1024))
    truncated = write(tmp_path / "t.csv.gz", data[: len(data) // 2])
    with pytest.raises(CorruptArchive, match="t.csv.gz: truncated compressed data"):
        list(gunzip_chunks(truncated, "t.csv.gz", limit=ExpansionLimit(10 * MiB)))
    with pytest.raises(CorruptArchive, match="not.gz: corrupt compressed data"):
        list(gunzip_chunks(write(tmp_path / "not.gz", b"plain text"), "not.gz",
                           limit=ExpansionLimit(MiB)))
    bomb = write(tmp_path / "bomb.csv.gz", gzip.compress(bytes(8 * MiB), compresslevel=9))
    produced = 0
    with pytest.raises(ExtractionLimitExceeded, match="bomb.csv.gz passed 2 MB"):
        for chunk in gunzip_chunks(bomb, "bomb.csv.gz", limit=ExpansionLimit(2 * MiB)):
            produced += len(chunk)
    assert produced <= 2 * MiB  # nothing past the limit was handed to the upload


def test_an_upload_source_hands_out_exact_parts_and_counts_what_it_hands_out(tmp_path):
    body = members_csv(5000)
    source = UploadSource(iter([body[i:i + 1000] for i in range(0, len(body), 1000)]))
    counter = CsvRecordCounter()
    assert source.head(10) == body[:10]
    source.observe = counter.feed
    parts = []
    while part := source.read(7777):
        parts.append(part)
    assert all(len(part) == 7777 for part in parts[:-1]) and b"".join(parts) == body
    assert source.size == len(body) and counter.data_rows == 5000


def test_the_steps_download_is_landed_only_as_the_recorded_copy(tmp_path):
    def stored(data: bytes = b"raw bytes") -> tuple[Path, dict]:
        local = write(tmp_path / "work" / "raw" / "x.gpg", data)
        return local, {"key": "raw/a/x.gpg", "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}

    local, copy = stored()
    checked = local_raw_file(local, copy)
    assert checked.path == local and checked.verified()
    assert local_raw_file(None, copy) is None  # nothing downloaded: the copy comes from S3
    assert local_raw_file(local, {**copy, "size": copy["size"] + 1}) is None
    local.unlink()
    assert local_raw_file(local, copy) is None

    local, copy = stored()  # changed on disk after it was hashed for the upload: the check says so
    local.write_bytes(b"raw bytez")
    assert not local_raw_file(local, copy).verified()

    local, copy = stored(os.urandom(3 * 1024 * 1024))
    checked = local_raw_file(local, copy)
    local.unlink()  # the landing removes it once decrypted, maybe before the hash is done
    assert checked.verified()


def test_encrypted_files_are_recognised_by_extension_or_packet(tmp_path):
    assert looks_encrypted(write(tmp_path / "a", b"\x85\x01\x0c..."), "a")  # old-format PKESK
    assert looks_encrypted(write(tmp_path / "b", b"\xc1\x5e..."), "b")  # new-format PKESK
    assert looks_encrypted(write(tmp_path / "c.gpg", b"anything"), "c.gpg")
    assert not looks_encrypted(write(tmp_path / "d.xml", roster_xml()), "d.xml")
    assert not looks_encrypted(write(tmp_path / "e.gz", gzip.compress(b"x")), "e.gz")
    assert decrypted_name("a.csv.gz.gpg") == "a.csv.gz" and decrypted_name("b.PGP") == "b"


# ------------------------------------------------------------------------------ names, retries


@pytest.mark.parametrize("path", ["outbox/a.csv.gpg", "a,b.csv", "odd...name%.csv",
                                  "tab\there.csv", "naïve façade.csv", "...."])
def test_partition_keys_are_valid_and_reversible(path):
    key = partition_key("acme", path)
    assert is_valid_partition_key(key)
    assert parse_partition_key(key) == ("acme", path)


def test_raw_keys_are_dated_by_mtime_and_versions_never_share_one():
    primary, alternate = raw_keys("acme", "outbox/m.csv.gpg", 10, 1717400000)
    assert primary == "raw/acme/2024-06-03/m.csv.gpg"
    assert alternate == "raw/acme/2024-06-03/v1717400000-10/m.csv.gpg"
    assert raw_keys("acme", "outbox/m.csv.gpg", 11, 1717400001)[1] != alternate


def test_identity_round_trips_through_cursor_tags_and_run_key():
    ident = RemoteIdentity(10, 20, (3, 4))
    cursor = FeedCursor(requested={"p": ident}, pending={"q": RemoteIdentity(1, 2)})
    assert FeedCursor.from_json(cursor.to_json()) == cursor
    assert RemoteIdentity.from_tags(ident.tags()) == ident
    assert ident.run_key("acme/p") == "acme/p@10:20+sig@3:4"
    assert RemoteIdentity(10, 20).run_key("acme/p") == "acme/p@10:20"
    assert RemoteIdentity.from_tags({}) is None


def test_only_transient_sftp_and_s3_errors_are_retried():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError

    from credflow_assets.resources.gpg import GpgBadSignature
    from credflow_assets.resources.sftp import SftpConnectionError, SftpPermissionDenied

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    def upload_failed(inner: Exception) -> Exception:
        try:
            try:
                raise inner
            except ClientError:
                raise S3UploadFailedError("Failed to upload")
        except S3UploadFailedError as error:
            return error

    assert is_transient(SftpConnectionError("dropped"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(upload_failed(client_error("InternalError", 500)))
    assert not is_transient(upload_failed(client_error("AccessDenied", 403)))
    assert not is_transient(SftpPermissionDenied("no"))
    assert not is_transient(GpgBadSignature("bad"))
    assert not is_transient(ValueError("bug"))

    ref = FileRef("acme", "outbox/x.csv.gpg")
    failure = file_failure(ref, "verify the signature", GpgBadSignature("BAD signature by key K"))
    assert failure.description.startswith(
        "provider acme: file outbox/x.csv.gpg: verify the signature failed: bad signature: ")
    assert failure.allow_retries is False
    assert file_failure(ref, "download", SftpConnectionError("dropped")).allow_retries is True

    # Every failure says which kind it is, and reads as a sentence with no exception class.
    dropped = file_failure(ref, "download", SftpConnectionError("connection dropped"))
    assert dropped.metadata["failure_kind"].value == "transient"
    assert dropped.description == ("provider acme: file outbox/x.csv.gpg: download failed: "
                                   "connection dropped. It is retried automatically; if it "
                                   "keeps failing, check the server")
    assert failure.metadata["failure_kind"].value == "permanent"
    assert failure.description.endswith(". Ask the provider to send the file and its .sig again")
    bug = file_failure(ref, "land", KeyError("raw_copy"))
    assert bug.description == ("provider acme: file outbox/x.csv.gpg: land failed: unexpected "
                               "error: 'raw_copy' (the run's log has the details)")
    assert "KeyError" not in bug.description
    throttled = file_failure(ref, "upload", client_error("SlowDown", 503))
    assert "S3 request failed: " in throttled.description and "ClientError" not in (
        throttled.description)
    assert throttled.metadata["failure_kind"].value == "transient"


def test_definitions_give_each_provider_its_assets_job_partitions_and_sensor():
    from credflow_assets.definitions import build_definitions
    from credflow_assets.provider_feeds.names import (
        job_name,
        landed_asset_key,
        provider_partitions,
        raw_asset_key,
    )

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    second = {**raw["providers"][0], "name": "beta_care", "folder": "beta_care",
              "gpg_passphrase": {"env": "BETA_CARE_GPG_PASSPHRASE"}}
    raw["providers"].append(second)
    config = CredflowConfig.model_validate(raw)
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"provider_feed_acme_health_sensor", "provider_feed_beta_care_sensor",
            "failure_notifications"} <= {sensor.name for sensor in repository.sensor_defs}
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    for provider in ("acme_health", "beta_care"):
        raw_key, landed = raw_asset_key(provider), landed_asset_key(provider)
        assert raw_key.path == ["s3", "provider_feeds", f"{provider}_raw"]
        job = repository.get_job(job_name(provider))
        assert job.partitions_def.name == provider_partitions(provider).name == (
            f"provider_{provider}_files")
        assert specs[raw_key].group_name == specs[landed].group_name == "provider_feeds"
        assert [dep.asset_key for dep in specs[landed].deps] == [raw_key]
        for key in (raw_key, landed):
            assets_def = defs.resolve_assets_def(key)
            assert assets_def.op.retry_policy.max_retries == 3
            # Only its own provider's resources: another provider's secrets never matter.
            assert {key for key in assets_def.required_resource_keys
                    if "acme" in key or "beta" in key} <= {
                f"provider_feed_{provider}", f"sftp_{provider}"}
    # Every run of a provider carries its tags, whatever launched it.
    from credflow_assets.flows import flow_run_tags
    assert flow_run_tags("provider_feed_beta_care_job", None, "beta_care/outbox/a.csv") == {
        "credflow/provider": "beta_care", "credflow/remote_path": "outbox/a.csv"}
    assert flow_run_tags("__ASSET_JOB", [landed_asset_key("beta_care")],
                         "beta_care/outbox/a.csv")["credflow/provider"] == "beta_care"


# Eight threads alive at once, each allocating on the C heap, then glibc's own count of arenas.
_COUNT_ARENAS = """
import ctypes, re, sys, tempfile, threading
from credflow_assets.provider_feeds.memory import limit_malloc_arenas
print("limited" if limit_malloc_arenas() else "left alone")
ready = threading.Barrier(8)
kept = []
def allocate():
    kept.append([bytes(4096) for _ in range(100)])
    ready.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile("r", suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(len(re.findall("<heap nr=", report.read())), "arenas")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc arenas are glibc's")
@pytest.mark.parametrize(("operator_setting", "expected"), [
    (None, "limited\n2 arenas"),
    ("5", "left alone\n5 arenas"),
])
def test_landing_caps_malloc_arenas_unless_the_operator_set_them(operator_setting, expected):
    # Eight threads would get nine arenas by default, each keeping freed upload parts.
    env = {name: value for name, value in os.environ.items() if name != "MALLOC_ARENA_MAX"}
    if operator_setting is not None:
        env["MALLOC_ARENA_MAX"] = operator_setting
    result = subprocess.run([sys.executable, "-c", _COUNT_ARENAS], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == expected


# ------------------------------------------------------------------------------ scratch owners

_MAKE_SCRATCH_AND_DIE = """
import os, signal, sys
from credflow_assets.provider_feeds.scratch import make_scratch_dir
path = make_scratch_dir(sys.argv[1], "acme", run_id=sys.argv[2] if sys.argv[2:] else None)
(path / "plain.csv").write_bytes(b"personal data")
print(path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_scratch_directory_names_its_process_and_is_dead_only_when_that_process_is(tmp_path):
    from credflow_assets.provider_feeds.scratch import (
        OWNER_FILE,
        dead_scratch_dirs,
        make_scratch_dir,
        read_owner,
    )

    work = tmp_path / "work"
    mine = make_scratch_dir(str(work), "acme", run_id="run-0")
    assert mine.name.startswith(f"credflow-provider-acme-p{os.getpid()}-")
    assert (mine.stat().st_mode & 0o777) == 0o700
    assert read_owner(mine).run_id == "run-0"

    killed = subprocess.Popen([sys.executable, "-c", _MAKE_SCRATCH_AND_DIE, str(work), "run-1"],
                              stdout=subprocess.PIPE, text=True)
    theirs = Path(killed.stdout.readline().strip())
    killed.stdout.close()
    time.sleep(0.2)  # killed, not reaped yet: a zombie runs no code, so it counts as dead
    assert [(path, owner.run_id) for path, owner in dead_scratch_dirs(str(work))] == [
        (theirs, "run-1")]
    killed.wait()
    assert [path for path, _ in dead_scratch_dirs(str(work))] == [theirs]

    # A live process under the same pid (reused) is not the owner; another host's is never
    # judged; a directory of an older credflow, with no owner, is left alone.
    marker = json.loads((theirs / OWNER_FILE).read_text())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for name, owner, dead in (
                ("reused", {**marker, "pid": sleeper.pid, "started": "1"}, True),
                ("alive", {**marker, "pid": sleeper.pid, "started": None}, False),
                ("elsewhere", {**marker, "host": "another-machine"}, False)):
            directory = work / f"credflow-provider-acme-{name}-p{owner['pid']}-x"
            directory.mkdir()
            (directory / OWNER_FILE).write_text(json.dumps(owner))
            assert (directory in [path for path, _ in dead_scratch_dirs(str(work))]) is dead, name
    finally:
        sleeper.kill()
        sleeper.wait()
    (work / "credflow-provider-acme-legacy").mkdir()
    dead = {path.name for path, _ in dead_scratch_dirs(str(work))}
    assert mine.name not in dead and "credflow-provider-acme-legacy" not in dead
