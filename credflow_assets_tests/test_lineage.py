"""`credflow lineage` for one file of each flow, by its source path and by its partition key, and
`credflow status`, on a stack of its own after `credflow local seed` and `credflow sync` of the
demo files (one staged file, `2024-04_claims_wrong_columns.csv`, is rejected on purpose).

Every link a lineage gives must resolve: each http URL answers 200, each s3:// object exists.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

from credflow_assets.resources.drive import DriveResource
from credflow_assets_tests.conftest import DEFAULT_CONFIG

BIN = Path(sys.executable).parent
REJECTED = "staging/claims/2024-04_claims_wrong_columns.csv"
PROMOTED = "staging/licenses/2024-q1_licenses.csv"
PROVIDER_PATH = "acme_health/outbox/members_2024-06-03.csv.gz.gpg"
FEED_FILE = "nsss referrals 2020-11-03.csv"  # the demo's feed file with two rejected rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("lineage") / "home"
    assert credflow(home, "local", "up").returncode == 0
    try:
        assert credflow(home, "local", "seed").returncode == 0
        synced = credflow(home, "sync")
        assert "1 failed" in synced.stdout, synced.stdout + synced.stderr
        exports = credflow(home, "local", "env").stdout.splitlines()
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports
                   if line.startswith("export "))
        yield {"home": home, "env": {name: value.strip("'\"") for name, value in env.items()}}
    finally:
        credflow(home, "local", "down")


def credflow(home: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    env = {**variables, "PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(home), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG),
           # The command runs the code under test (a worktree's, on PYTHONPATH).
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    return subprocess.run([str(BIN / "credflow"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def lineage_json(demo, source: str) -> dict:
    done = credflow(demo["home"], "lineage", source, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def s3(demo):
    env = demo["env"]
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        region_name=env["AWS_DEFAULT_REGION"])


def links_of(found) -> tuple[set[str], set[str]]:
    """Every http URL (`url`, `link`) and every s3:// object URI (`uri`) in a lineage."""
    urls, uris = set(), set()
    if isinstance(found, dict):
        for name, value in found.items():
            if name in ("url", "link") and isinstance(value, str):
                urls.add(value)
            elif name == "uri" and isinstance(value, str):
                uris.add(value)
            else:
                more_urls, more_uris = links_of(value)
                urls |= more_urls
                uris |= more_uris
    elif isinstance(found, list):
        for item in found:
            more_urls, more_uris = links_of(item)
            urls |= more_urls
            uris |= more_uris
    return urls, uris


def assert_every_link_resolves(demo, found: dict) -> None:
    urls, uris = links_of(found)
    assert urls and uris, found
    for url in urls:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200, url
    client = s3(demo)
    for uri in uris:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        client.head_object(Bucket=bucket, Key=key)  # raises when the object is not there


def read_object(demo, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return s3(demo).get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_provider_file_by_its_sftp_path_and_by_its_partition_key(demo):
    found = lineage_json(demo, f"sftp:{PROVIDER_PATH}")
    assert found["flow"] == "provider_feeds"
    assert found["partition"] == f"acme_health/{PROVIDER_PATH}"
    assert lineage_json(demo, found["partition"]) == found
    assert found["source"]["sftp_path"] == PROVIDER_PATH
    assert found["source"]["size"] > 0 and found["source"]["mtime"] > 0
    raw = found["raw_copy"]
    assert hashlib.sha256(read_object(demo, raw["uri"])).hexdigest() == raw["sha256"]
    assert len(read_object(demo, raw["uri"])) == found["source"]["size"]
    assert found["signature"]["verdict"].startswith("verified")
    assert found["signature"]["copy"]["uri"] == raw["uri"] + ".sig"
    assert [landed["key"] for landed in found["landed"]] == [
        "data/csv/acme_health/members_2024-06-03.csv"]
    assert found["outcome"] == "landed"
    assert found["runs"][0]["status"] == "SUCCESS"
    assert found["log"] == found["runs"][0]["log"]
    assert PROVIDER_PATH in gzip.decompress(read_object(demo, found["log"]["uri"])).decode()
    assert_every_link_resolves(demo, found)

    text = credflow(demo["home"], "lineage", PROVIDER_PATH).stdout
    assert "signature        verified" in text and raw["sha256"] in text
    assert "data/csv/acme_health/members_2024-06-03.csv" in text


def test_a_feed_file_by_its_name_by_its_drive_id_and_by_its_partition_key(demo):
    found = lineage_json(demo, FEED_FILE)
    assert found["flow"] == "drive_feeds"
    source = found["source"]
    assert source["feed"] == "nsss" and source["name"] == FEED_FILE
    assert found["partition"] == f"nsss/{source['drive_file_id']}/{source['revision']}/{FEED_FILE}"
    assert lineage_json(demo, source["drive_file_id"]) == found
    assert lineage_json(demo, found["partition"]) == found
    # The demo's file has twelve rows, two of them bad (an empty id, a date of birth that is
    # not a date): ten inserted, two rejected, each reason counted.
    assert found["rows"]["rows_read"] == 12
    assert (found["rows"]["inserted"], found["rows"]["rejected"]) == (10, 2)
    assert found["rejections_by_reason"] == {
        "date_of_birth: not a date in the format DD/MM/YYYY": 1, "nss_id: empty": 1}
    assert found["summary"]["name"].startswith("nsss referrals 2020-11-03 - summary")
    assert found["runs"][0]["status"] == "SUCCESS" and found["log"]
    assert_every_link_resolves(demo, found)

    text = credflow(demo["home"], "lineage", FEED_FILE).stdout
    assert "10 inserted" in text and "2 rejected" in text and found["summary"]["url"] in text


def test_a_promoted_staged_file_by_its_s3_uri_and_by_its_key(demo):
    found = lineage_json(demo, f"s3://credflow-adhoc/{PROMOTED}")
    assert found["flow"] == "staged_tables" and found["partition"] == PROMOTED
    assert lineage_json(demo, PROMOTED) == found
    assert not found["waiting_in_staging"] and found["outcome"] == "promoted to prod"
    assert [(check["check"], check["passed"]) for check in found["checks"]] == [
        ("columns_match_table", True), ("rows_match_schema", True)]
    assert found["prod"]["key"].startswith("prod/licenses/ingest_date=")
    assert found["prod"]["key"].endswith("/2024-q1_licenses.csv")
    assert found["glue"]["partition"] == found["prod"]["key"].split("/")[2]
    assert found["source"]["in_staging"] is False  # promoted: removed from staging
    assert_every_link_resolves(demo, found)


def test_the_rejected_staged_file_waits_in_staging_naming_its_columns(demo):
    found = lineage_json(demo, REJECTED)
    assert found["waiting_in_staging"] and found["prod"] is None and found["glue"] is None
    columns_check = next(check for check in found["checks"]
                         if check["check"] == "columns_match_table")
    assert not columns_check["passed"]
    assert columns_check["columns"] == {"extra": ["notes"],
                                        "out_of_order": ["last_name", "first_name"]}
    assert found["runs"][0]["failure_kind"] == "permanent"
    assert "Upload a corrected file" in found["runs"][0]["error"]
    report = read_object(demo, found["error_report"]["uri"]).decode()
    assert report.splitlines()[0] == "row,column,rule,value" and ",notes,extra column" in report
    assert found["source"]["uploader"] == "ana.analyst@example.com"
    assert_every_link_resolves(demo, found)

    text = credflow(demo["home"], "lineage", REJECTED).stdout
    assert "prod             waiting in staging" in text
    assert "extra: notes; out of order: last_name, first_name" in text
    assert found["error_report"]["url"] in text


def test_a_therapist_by_an_upload_key_and_by_their_id(demo):
    found = lineage_json(demo, "t-1001/license.pdf")
    assert found["flow"] == "therapists" and found["therapist_id"] == "t-1001"
    assert lineage_json(demo, "t-1001") == found
    assert "t-1001/license.pdf" in {placed["s3_key"] for placed in found["files"]}
    assert found["runs"][0]["status"] == "SUCCESS"
    assert found["runs"][0]["run_id"] == found["files"][0]["run_id"]
    assert found["log"]["uri"].endswith(f"/therapists/t-1001/{found['runs'][0]['run_id']}.log.gz")
    assert_every_link_resolves(demo, found)


def test_a_source_nothing_matches_says_what_to_give(demo):
    done = credflow(demo["home"], "lineage", "acme_health/outbox/never_sent.csv")
    assert done.returncode == 1
    assert "no file of any flow matches 'acme_health/outbox/never_sent.csv'" in done.stderr
    assert "Traceback" not in done.stderr


def test_s3_out_of_reach_is_said_in_words(demo):
    done = credflow(demo["home"], "lineage", REJECTED, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: could not read the logs and objects of staged_tables "
                                  f"file '{REJECTED}' from S3 (http://127.0.0.1:9)")
    assert "Traceback" not in done.stderr


def test_status_names_the_last_file_of_each_flow_and_the_rejected_file_waiting(demo):
    done = credflow(demo["home"], "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == {"therapists", "drive_feeds", "provider_feeds", "staged_tables"}
    for flow, found in status.items():
        assert found["last_file_in"]["partition"], flow
        assert found["last_success"]["partition"], flow
        assert found["under_way"] == [], flow
        # The demo config gives its provider a cadence (24h; its file just came), no one else.
        expected = "fresh" if flow == "provider_feeds" else "not configured"
        assert found["overdue"] == {"state": expected, "sources": []}, flow
        if flow != "staged_tables":
            assert found["failures_waiting"] == [], flow
    waiting = status["staged_tables"]["failures_waiting"]
    assert [failure["partition"] for failure in waiting] == [REJECTED]
    assert "extra column: notes" in waiting[0]["error"]
    assert status["staged_tables"]["last_file_in"]["partition"].startswith("staging/")
    assert status["provider_feeds"]["last_file_in"]["partition"].startswith("acme_health/")
    assert status["therapists"]["last_file_in"]["partition"].startswith("t-")
    text = credflow(demo["home"], "status").stdout
    assert f"waiting fix      {REJECTED}: " in text


def test_a_name_uploaded_twice_lists_both_files_and_says_how_to_pick_one(demo):
    """Runs last: it adds a feed file to the demo."""
    first = lineage_json(demo, FEED_FILE)
    env = demo["env"]
    drive = DriveResource(api_url=env["CREDFLOW_DRIVE_URL"], token=env["CREDFLOW_DRIVE_TOKEN"])
    again = Path(demo["home"]) / FEED_FILE
    again.write_text("nss_id,nhs_number\n")
    second = drive.upload_file(again, FEED_FILE, "local-feed-nsss-inbound",
                               mime_type="text/csv")
    credflow(demo["home"], "sync")  # the second file's run may fail; its partition stays

    done = credflow(demo["home"], "lineage", FEED_FILE)
    assert done.returncode == 1
    assert f"2 files match '{FEED_FILE}'" in done.stderr
    assert "with one of these partition keys" in done.stderr
    assert first["partition"] in done.stderr and f"nsss/{second['id']}/" in done.stderr
    assert lineage_json(demo, second["id"])["source"]["drive_file_id"] == second["id"]
