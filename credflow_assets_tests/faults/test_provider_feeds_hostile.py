"""Provider feeds against hostile files and partial configuration, on a stack of its own: real
sshd, real gpg, moto S3, and a real process killed mid-landing.

- Bombs are refused on the way, whatever layer expands them (gpg's own compression, gzip inside
  gpg, the expansion ratio), with a sentence naming the file and the limit, and no more than
  the limit was ever written to scratch.
- A provider whose secret is missing fails its own files only, with a sentence naming the
  variable; its files land once the variable is set.
- A landing killed with SIGKILL leaves scratch files, a run that never ends and an open
  multipart upload: the next run removes, fails and aborts them, and the file lands once.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from credflow_assets.config import load_config
from credflow_assets.local import seed_provider_feeds as seed
from credflow_assets.local import stack
from credflow_assets.local.gpg_keys import encrypt_file
from credflow_assets.provider_feeds.names import (
    job_name,
    landed_asset_key,
    partition_key,
    provider_partitions,
    raw_asset_key,
)
from credflow_assets.provider_feeds.open_uploads import recorded_uploads
from credflow_assets.provider_feeds.settings import WORK_DIR_PREFIX, ProviderFeedsSettings
from credflow_assets.cli.sync import sync
from credflow_assets_tests.conftest import DEFAULT_CONFIG
from credflow_assets_tests.test_provider_feeds import flow_definitions, keys_under, read

MiB = 1024 * 1024
MISSING_ENV = "CREDFLOW_TEST_BETA_CARE_GPG_PASSPHRASE"
SMALL_LIMIT = 8 * MiB  # acme_health's max_extracted_bytes here


def write_config(path: Path) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    acme = raw["providers"][0]
    acme["max_extracted_bytes"] = SMALL_LIMIT

    def provider(name: str, **changes):
        return {**acme, "name": name, "remote_dir": f"{name}/outbox", "folder": name,
                "max_extracted_bytes": 10 * 1024**3, **changes}

    raw["providers"] += [
        provider("ratio_feed"),  # default limits: the expansion ratio binds
        provider("beta_care", gpg_passphrase={"env": MISSING_ENV}),  # never set here
        provider("bigfeed"),
    ]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("provider_hostile")
    home = base / "home"
    config_path = write_config(base / "credflow.yaml")
    config = load_config(config_path)
    state = stack.up(home, config, config_path)
    variables = stack.environment(state, config)
    saved = {name: os.environ.get(name) for name in [*variables, MISSING_ENV]}
    os.environ.update(variables)
    os.environ.pop(MISSING_ENV, None)
    scratch = base / "scratch"
    settings = ProviderFeedsSettings(bucket=config.buckets.provider_data, work_dir=str(scratch),
                                     logs_bucket=config.buckets.logs, settle_seconds=0.3)
    import boto3

    dagster_dir = base / "dagster"
    dagster_dir.mkdir()
    try:
        # From its directory, so that a child process opens the same instance.
        with dg.DagsterInstance.from_config(str(dagster_dir)) as instance:
            yield {
                "base": base, "config": config, "config_path": config_path, "env": variables,
                "defs": flow_definitions(config, settings), "instance": instance,
                "dagster_dir": dagster_dir, "scratch": scratch,
                "s3": boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"]),
                "bucket": config.buckets.provider_data,
                "sftp_root": Path(state.services["sshd"]["root"]),
            }
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stack.down(home)


# ------------------------------------------------------------------------------ helpers


def credflow_key(flow) -> list[str]:
    return [seed._credflow_fingerprint(flow["env"]["CREDFLOW_GPG_HOME"])]


def drop(flow, remote_path: str, data: bytes) -> Path:
    target = flow["sftp_root"] / remote_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def drop_encrypted(flow, remote_path: str, plain: Path, *, compress: bool = False) -> Path:
    target = flow["sftp_root"] / remote_path
    target.parent.mkdir(parents=True, exist_ok=True)
    return encrypt_file(flow["env"]["CREDFLOW_GPG_HOME"], plain, target, credflow_key(flow),
                        compress=compress)


def zeros(path: Path, size: int) -> Path:
    with open(path, "wb") as sparse:
        sparse.truncate(size)  # reads as zeros, costs no disk
    return path


def failure_kind(flow, run_id: str) -> str:
    for record in flow["instance"].get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        data = record.event_log_entry.dagster_event.step_failure_data
        if data.user_failure_data is not None:
            return data.user_failure_data.metadata["failure_kind"].value
    raise AssertionError(f"no step failure with metadata in run {run_id}")


def open_uploads(flow, prefix: str = "") -> list[dict]:
    return flow["s3"].list_multipart_uploads(Bucket=flow["bucket"], Prefix=prefix).get(
        "Uploads", [])


def landing_upload_open(flow, key: str) -> bool:
    """The landing's upload (under data/) is recorded in its run. The raw copy's upload, which
    runs alongside, is recorded too: "yes" alone does not say which one is open."""
    runs = flow["instance"].get_runs(dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
    return bool(runs) and any(upload_key.startswith("data/")
                              for _, upload_key, _ in recorded_uploads(runs[0]))


class PeakTreeSize:
    """The largest total size of the files under a directory while it runs (every 2 ms)."""

    def __init__(self, directory: Path):
        self.directory, self.peak, self._stop = directory, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            total = 0
            for root, _dirs, files in os.walk(self.directory):
                for name in files:
                    try:
                        total += os.stat(os.path.join(root, name)).st_size
                    except FileNotFoundError:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.002)

    def __enter__(self) -> PeakTreeSize:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------ tests


def test_bombs_are_refused_on_the_way_with_the_file_and_the_limit_named(hostile):
    work = hostile["base"] / "make"
    work.mkdir()
    # 64 MiB of zeros compressed by gpg itself: about 64 KB of .gpg.
    gpg_bomb = drop_encrypted(hostile, "acme_health/outbox/zeros.csv.gpg",
                              zeros(work / "zeros.csv", 64 * MiB), compress=True)
    # 64 MiB of zeros gzipped, then encrypted without compression: gzip inside gpg.
    layered_plain = work / "layered.csv.gz"
    with open(zeros(work / "z", 64 * MiB), "rb") as source, \
            gzip.open(layered_plain, "wb", compresslevel=9) as out:
        while chunk := source.read(MiB):
            out.write(chunk)
    layered = drop_encrypted(hostile, "acme_health/outbox/layered.csv.gz.gpg", layered_plain)
    # The same bomb for a provider with the default 10 GB limit: the ratio refuses it.
    ratio_bomb = drop_encrypted(hostile, "ratio_feed/outbox/zeros.csv.gpg", work / "zeros.csv",
                                compress=True)
    assert max(path.stat().st_size for path in (gpg_bomb, layered, ratio_bomb)) < 256 * 1024
    drop(hostile, "acme_health/outbox/good.csv", b"id,name\n1,Ann\n")

    with PeakTreeSize(hostile["scratch"]) as scratch:
        report = sync(hostile["defs"], hostile["instance"], progress=lambda line: None,
                      sensor_names=["provider_feed_acme_health_sensor",
                                    "provider_feed_ratio_feed_sensor"])

    outcomes = {run.partition: run for run in report.runs}
    assert outcomes["acme_health/acme_health/outbox/good.csv"].success
    refusals = {
        "acme_health/acme_health/outbox/zeros.csv.gpg": (
            "provider acme_health: file acme_health/outbox/zeros.csv.gpg: the decrypted "
            "content passed 8 MB (max_extracted_bytes); refused, nothing landed. A "
            "decompression bomb, or, if the file is genuine, raise the provider's "
            "max_extracted_bytes"),
        "acme_health/acme_health/outbox/layered.csv.gz.gpg": (
            "provider acme_health: file acme_health/outbox/layered.csv.gz.gpg: the "
            "decompressed content of layered.csv.gz passed 8 MB (max_extracted_bytes); "
            "refused, nothing landed. A decompression bomb, or, if the file is genuine, raise "
            "the provider's max_extracted_bytes"),
    }
    for partition, sentence in refusals.items():
        assert not outcomes[partition].success
        assert outcomes[partition].error == sentence
        assert failure_kind(hostile, outcomes[partition].run_id) == "permanent"
    ratio = outcomes["ratio_feed/ratio_feed/outbox/zeros.csv.gpg"]
    received = ratio_bomb.stat().st_size
    assert ratio.error.startswith("provider ratio_feed: file ratio_feed/outbox/zeros.csv.gpg: the "
                                  "decrypted content passed ")
    assert f"(max_expansion_ratio: 200 times the {received / 1024:.1f} KB received); refused, " \
           "nothing landed" in ratio.error
    assert ratio.error.endswith("raise the provider's max_expansion_ratio")

    # Nothing past a limit was ever written: the bombs hold 64 MiB each, the larger limit is
    # ratio_feed's (about 16 MB), the raw copies and the good file are a few hundred KB.
    # Nothing of a bomb landed, and nothing was left behind.
    assert 0 < scratch.peak <= max(SMALL_LIMIT, 200 * received) + MiB < 64 * MiB, scratch.peak
    assert set(keys_under(hostile, "data/")) == {"data/csv/acme_health/good.csv"}
    assert not list(hostile["scratch"].iterdir())
    assert open_uploads(hostile) == []
    # The raw copies stay: a rerun with a raised limit needs no SFTP server.
    assert {key.rsplit("/", 1)[1] for key in keys_under(hostile, "raw/")} >= {
        "zeros.csv.gpg", "layered.csv.gz.gpg"}


def test_a_provider_whose_secret_is_missing_fails_only_its_own_files(hostile):
    work = hostile["base"] / "secret"
    work.mkdir()
    plain = work / "roster.csv"
    plain.write_bytes(seed.members_csv(5))
    drop_encrypted(hostile, "beta_care/outbox/roster.csv.gpg", plain)
    drop(hostile, "acme_health/outbox/other.csv", b"id\n7\n")
    beta = partition_key("beta_care", "beta_care/outbox/roster.csv.gpg")

    report = sync(hostile["defs"], hostile["instance"], progress=lambda line: None,
                  sensor_names=["provider_feed_acme_health_sensor",
                                "provider_feed_beta_care_sensor"])

    assert report.sensor_errors == {}
    outcomes = {run.partition: run for run in report.runs}
    assert outcomes["acme_health/acme_health/outbox/other.csv"].success
    assert read(hostile, "data/csv/acme_health/other.csv") == b"id\n7\n"
    assert not outcomes[beta].success
    assert outcomes[beta].error == (
        f"provider beta_care: environment variable {MISSING_ENV} is not set; its files wait "
        "until it is. This file (beta_care/outbox/roster.csv.gpg) is not landed: set the "
        "variable where the code location runs, then rerun it: credflow reparse --flow "
        f"provider_feeds --partition '{beta}'")
    assert failure_kind(hostile, outcomes[beta].run_id) == "permanent"
    assert any(key.startswith("raw/beta_care/") for key in keys_under(hostile, "raw/"))
    assert not keys_under(hostile, "data/csv/beta_care/")

    # Once it is set, the file lands from its raw copy.
    os.environ[MISSING_ENV] = hostile["env"]["CREDFLOW_GPG_PASSPHRASE"]
    try:
        result = hostile["defs"].resolve_job_def(job_name("beta_care")).execute_in_process(
            instance=hostile["instance"], partition_key=beta, raise_on_error=False)
    finally:
        os.environ.pop(MISSING_ENV)
    assert result.success
    assert read(hostile, "data/csv/beta_care/roster.csv") == seed.members_csv(5)


KILLED_LANDING = textwrap.dedent("""
    import sys
    import dagster as dg
    from credflow_assets import provider_feeds
    from credflow_assets.config import load_config
    from credflow_assets.provider_feeds.names import job_name
    from credflow_assets.provider_feeds.settings import ProviderFeedsSettings
    from credflow_assets.resources.from_config import build_resources

    config_path, work_dir, dagster_dir, key = sys.argv[1:]
    config = load_config(config_path)
    # Small parts, one at a time: the landing's multipart upload stays open long enough.
    settings = ProviderFeedsSettings(bucket=config.buckets.provider_data, work_dir=work_dir,
                                     logs_bucket=config.buckets.logs, upload_part_mib=5,
                                     upload_concurrency=1)
    shared = {name: resource for name, resource in build_resources(config).items()
              if name == "s3" or name.startswith("sftp_")}
    defs = dg.Definitions.merge(dg.Definitions(resources=shared),
                                provider_feeds.build_defs(config, settings=settings))
    with dg.DagsterInstance.from_config(dagster_dir) as instance:
        defs.resolve_job_def(job_name("bigfeed")).execute_in_process(
            instance=instance, partition_key=key, raise_on_error=False)
""")


def test_a_killed_landing_is_cleaned_up_by_the_next_run_and_the_file_lands_once(hostile):
    # Plain data (a random first byte reads as an OpenPGP packet about one time in twenty).
    big = drop(hostile, "bigfeed/outbox/big.dat", b"plain data\n" + os.urandom(64 * MiB))
    key = partition_key("bigfeed", "bigfeed/outbox/big.dat")
    instance = hostile["instance"]
    instance.add_dynamic_partitions(provider_partitions("bigfeed").name, [key])

    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_LANDING, str(hostile["config_path"]),
         str(hostile["scratch"]), str(hostile["dagster_dir"]), key],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # Killed once the landing's upload is open in S3 and recorded in its run (the few
        # milliseconds between the two are the bucket's lifecycle rule's).
        while not landing_upload_open(hostile, key):
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the landing never started its upload"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    left = [path for path in hostile["scratch"].iterdir() if f"-p{child.pid}-" in path.name]
    assert left and sum(f.stat().st_size for d in left for f in d.rglob("*")) > 0
    killed_upload = open_uploads(hostile, "data/")
    assert [upload["Key"] for upload in killed_upload] == ["data/other/bigfeed/big.dat"]
    killed_run = next(run for run in instance.get_runs(dg.RunsFilter(
        tags={"dagster/partition": key})))
    assert killed_run.status == dg.DagsterRunStatus.STARTED  # nothing will ever end it

    result = hostile["defs"].resolve_job_def(job_name("bigfeed")).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False)

    assert result.success
    assert not any(path.exists() for path in left)
    assert not [path for path in hostile["scratch"].iterdir()
                if path.name.startswith(WORK_DIR_PREFIX)]
    assert open_uploads(hostile) == []
    killed_run = instance.get_run_by_id(killed_run.run_id)
    assert killed_run.status == dg.DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(killed_run.run_id,
                                           of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert "died while the run was under way" in failure[0].event_log_entry.dagster_event.message
    # Landed exactly once: one raw copy (the killed run's, reused), one landed object, one
    # landed materialization.
    raw = keys_under(hostile, "raw/bigfeed/")
    assert list(raw.values()) == [big.stat().st_size]
    assert keys_under(hostile, "data/other/bigfeed/") == {
        "data/other/bigfeed/big.dat": big.stat().st_size}
    landed = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=landed_asset_key("bigfeed"), asset_partitions=[key]), limit=10).records
    assert len(landed) == 1
    assert instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=raw_asset_key("bigfeed"), asset_partitions=[key]), limit=10).records


def test_a_sensor_tick_removes_the_scratch_a_killed_process_left(hostile):
    """No new file needed: the provider's next sensor tick cleans up. A directory of a run
    this Dagster instance does not know (another stack sharing the work dir) loses its files
    but keeps its marker, for that instance's own cleanup to fail its run."""
    from credflow_assets.provider_feeds.scratch import OWNER_FILE
    from credflow_assets_tests.test_provider_feeds_units import _MAKE_SCRATCH_AND_DIE

    left = {}
    for run_id in ("", "run-of-another-instance"):
        killed = subprocess.run([sys.executable, "-c", _MAKE_SCRATCH_AND_DIE,
                                 str(hostile["scratch"]), *([run_id] if run_id else [])],
                                capture_output=True, text=True)
        left[run_id] = Path(killed.stdout.strip())
        assert (left[run_id] / "plain.csv").read_bytes() == b"personal data"

    report = sync(hostile["defs"], hostile["instance"], progress=lambda line: None,
                  sensor_names=["provider_feed_ratio_feed_sensor"])

    assert report.sensor_errors == {} and report.runs == []
    assert not left[""].exists()
    assert [path.name for path in left["run-of-another-instance"].iterdir()] == [OWNER_FILE]
