"""Benchmark 1: provider landing, credflow against the CLI chain on the same bytes.

    .venv/bin/python bench/provider_landing.py            # 8 files, 1 GiB; then one 2 GiB file
    .venv/bin/python bench/provider_landing.py --quick    # 8 files, 32 MiB; then one 64 MiB file
    .venv/bin/python bench/provider_landing.py --sftp-read 256   # SFTP reads alone (below)

Data: GPG-encrypted (to credflow's local key, no compression, as providers send large files)
gzip CSV, in N files on the local sshd, made fresh in a temporary directory. The gzip stream is
a series of identical gzip members of one generated CSV block (valid gzip: `gunzip` and Python
read every member); the CSV is random-valued rows that compress about 2.7:1, like real rosters.

credflow: `sync(build_definitions(config), instance, sensor_names=[provider sensor])` in a child
process: the sensor tick, then per file a run of one step materializing `raw` (SFTP → S3 raw
copy) and `landed` (raw copy → verify → gpg decrypt → gunzip, CSV record count and multipart
upload to data/csv/… in one pass). The landing reads the file the step just downloaded, so
`landed.fetch_raw` is a sha256 check rather than a download. `landed.decompress` is the time
spent decompressing inside the upload (overlapped with it), so it is left out of the stage sum.
Peak RSS is that child's VmHWM.

Baseline (the practical limit, the same bytes, the same S3): OpenSSH `sftp -b` get of all files in
one session, `gpg --decrypt` each, `gunzip` each, boto3 `upload_file` each (default TransferConfig).

MB/s = encrypted input bytes / wall time (MB = 10^6 bytes; sizes in MiB/GiB are binary).
The single big file is landed by credflow alone, for its peak RSS (and its rate).
CPU seconds (user + system) are printed beside wall times, because the machine is shared and
load inflates wall time more: credflow's child with its gpg processes; the baseline's sftp,
gpg and gunzip processes plus this process's boto3 upload; and, for each half, the local S3
(moto) and sshd, which run on the same 2 cores (read from /proc). The child also times its
S3 calls by operation (`botocore`'s `_make_api_call`, wrapped for the measurement only):
the wall seconds its threads waited on S3, e.g. for moto to assemble a completed upload.

`--daemon [default|celery1|celery2]` lands the files under `dagster-daemon run` instead of
`credflow sync`: a fresh instance with the local stack's dagster.yaml (the default run launcher,
up to 4 runs at once), or with deploy/dagster.celery.yaml (PostgreSQL, 1 or 2 Celery workers of
one process each, as bench/daemon_throughput.py starts them), every sensor stopped but the
provider's, the files in the outbox before the daemon starts. Its
time runs from the first run's creation (the sensor's tick that found the files; the sensor
polls every 60 s, a latency the chain has no equivalent of) to the last run's end, as Dagster
recorded them; the daemon's start and first tick are printed beside it. Peak RSS is the
largest of the run processes' (each lands one file; under Celery, the worker's process), read
once a second while they run: a floor, since one may peak after its last reading. No 2 GiB file is landed in this mode.

`--same-work` also runs the chain with an `upload_file` of each encrypted file, the raw copy
credflow keeps (nothing lost) and the issue's chain does not; it is printed beside the
issue's chain, which stays the baseline of the target.

`--sftp-read MIB`: one file of MIB random bytes on a fresh local sshd, read by OpenSSH `sftp`
(a new connection each time, as the baseline does), by paramiko as credflow read before
session 8 (32 KiB requests, one 8 MiB window at a time), by paramiko's own `prefetch()`, and by
`SftpSession.download` as it is now; wall and CPU seconds, in rounds, alternating.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import time
from typing import Any
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MiB,
    bench_stack,
    bench_workdir,
    child_result,
    print_machine,
    progress_with_rss,
    run_child,
    table,
    write_json,
)

PROVIDER = "acme_health"
SENSOR = f"provider_feed_{PROVIDER}_sensor"
MB = 1_000_000
BLOCK_ROWS = 400_000  # ~36 MiB of CSV per generated block


# ------------------------------------------------------------------------------ data


def csv_block(rows: int, seed: int) -> bytes:
    """Random-valued roster rows (compress ~2.7:1 with gzip -6)."""
    rng = random.Random(seed)
    first = ["Amara", "Ben", "Chloe", "Dev", "Ebony", "Femi", "Grace", "Hassan", "Isla", "Jamal"]
    last = ["Adeyemi", "Brown", "Chen", "Doherty", "Evans", "Fernandes", "Green", "Hussain"]
    states = ["NY", "CA", "TX", "FL", "WA", "IL"]
    lines = []
    for index in range(rows):
        lines.append(
            f"m-{rng.randrange(10**9):09d},{rng.choice(first)},{rng.choice(last)},"
            f"{rng.randrange(10**10):010d},{rng.choice(states)},"
            f"{rng.randrange(1, 10**6) / 100:.2f},20{rng.randrange(10, 25)}-"
            f"{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d},"
            f"note {rng.randrange(10**6)}\n"
        )
    return "".join(lines).encode()


def make_gzip_csv(path: Path, target_bytes: int, member: bytes, member_plain: int,
                  header: bytes) -> int:
    """A gzip file of about `target_bytes`: a header member, then copies of `member`; returns
    the CSV bytes it holds (without the header)."""
    plain = 0
    with open(path, "wb") as out:
        out.write(gzip.compress(header, mtime=0))
        written = out.tell()
        while written < target_bytes:
            out.write(member)
            written += len(member)
            plain += member_plain
    return plain



def generate(outbox: Path, scratch: Path, home: Path, sizes: list[tuple[str, int]]) -> dict:
    """Encrypted gzip CSVs in the outbox (written under a dot-name, then renamed)."""
    from credflow_assets.local.gpg_keys import encrypt_file
    from credflow_assets.local.seed_provider_feeds import demo_provider_gpg

    started = time.monotonic()
    # A member of at most a quarter of the smallest file (~30,000 rows per MiB of gzip).
    rows = max(10_000, min(BLOCK_ROWS, min(size for _, size in sizes) * 30_000 // MiB // 4))
    block = csv_block(rows, seed=8)
    member = gzip.compress(block, compresslevel=6, mtime=0)
    header = b"member_id,first_name,last_name,npi,license_state,amount,date,notes\n"
    print(f"CSV block {len(block) / MiB:.1f} MiB → gzip member {len(member) / MiB:.1f} MiB "
          f"(ratio {len(block) / len(member):.2f})")
    files = {}
    outbox.mkdir(parents=True, exist_ok=True)
    with demo_provider_gpg(home) as keys:
        for name, size in sizes:
            gz = scratch / (name.removesuffix(".gpg"))
            plain = make_gzip_csv(gz, size, member, len(block), header)
            hidden = outbox / f".{name}.writing"
            encrypt_file(keys.homedir, gz, hidden, [keys.credflow_fingerprint])
            gz.unlink()
            os.replace(hidden, outbox / name)
            files[name] = {"encrypted_bytes": (outbox / name).stat().st_size,
                           "csv_bytes": plain + len(header)}
    total = sum(f["encrypted_bytes"] for f in files.values())
    print(f"generated {len(files)} file(s), {total / MiB:,.0f} MiB encrypted, in "
          f"{time.monotonic() - started:.0f}s")
    return files


# ------------------------------------------------------------------------------ credflow


def child_credflow(options: dict) -> None:
    """In the child: one sync of the provider sensor; stage seconds from the materializations."""
    import dagster as dg

    from credflow_assets.config import load_config
    from credflow_assets.definitions import build_definitions
    from credflow_assets.provider_feeds.names import landed_asset_key, raw_asset_key
    from credflow_assets.cli.sync import sync

    profile = options.get("profile")
    started = time.monotonic()
    s3_calls = _time_s3_calls()
    config = load_config(os.environ["CREDFLOW_CONFIG"])
    _override_settings(options.get("settings") or {})
    if options.get("no_drive_feeds"):  # what the drive feeds' definitions cost (pandas, pandera)
        config = config.model_copy(update={"feeds": []})
    defs = build_definitions(config)
    with dg.DagsterInstance.get() as instance:
        load_seconds = time.monotonic() - started
        profiler = None
        if profile and profile.endswith(".pstats"):  # cProfile: the main thread only
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        elif profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.005)
            profiler.start()
        t0 = time.monotonic()
        report = sync(defs, instance, sensor_names=[SENSOR], progress=progress_with_rss)
        seconds = time.monotonic() - t0
        if profiler is not None and profile.endswith(".pstats"):
            profiler.disable()
            profiler.dump_stats(profile)
        elif profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(unicode=True, show_all=False))
        stages: dict[str, float] = {}
        landed_too = True  # one step: the raw copy uploads while the file lands
        for stage, key, names in (
                ("raw", raw_asset_key(PROVIDER), ("download", "upload")),
                ("landed", landed_asset_key(PROVIDER),
                 ("fetch_raw", "verify", "decrypt", "decompress", "upload"))):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key), limit=1000).records
            run_ids = {run.run_id for run in report.runs}
            for record in records:
                if record.event_log_entry.run_id not in run_ids:
                    continue
                metadata = record.asset_materialization.metadata
                within = {name for name, flag in (("decompress", "decompressed_while_uploading"),
                                                  ("decrypt", "decrypted_while_uploading"))
                          if metadata.get(flag) is not None and metadata[flag].value}
                for name in names:
                    value = metadata.get(f"seconds_{name}")
                    if value is not None:
                        label = f"{stage}.{name}"
                        if name in within:
                            label += " (within upload)"
                        elif (stage, name) == ("raw", "upload") and landed_too:
                            label += " (alongside the landing)"
                        stages[label] = stages.get(label, 0.0) + float(value.value)
    child_result({
        "cpu_seconds": _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN),
        "sync_seconds": seconds,
        "load_seconds": load_seconds,
        "runs": len(report.runs),
        "failed": [f"{run.partition}: {run.error}" for run in report.failed],
        "run_seconds": [run.seconds for run in report.runs],
        "stages": stages,
        "s3_calls": {f"{op} ({where})": [count, round(seconds, 2)]
                     for (op, where), (count, seconds) in sorted(s3_calls.items())},
    })


def _time_s3_calls() -> dict[tuple[str, str], list]:
    """Wall seconds in each S3 operation of this process, by operation and by where it writes
    (raw copy, landed data, other): the waits on the local S3 that a timeline would show.
    Measurement only: wraps botocore's `BaseClient._make_api_call`."""
    import threading

    from botocore.client import BaseClient

    totals: dict[tuple[str, str], list] = {}
    lock = threading.Lock()
    original = BaseClient._make_api_call

    def timed_call(self, operation_name, api_params):
        key = str(api_params.get("Key", ""))
        where = "raw" if key.startswith("raw/") else "data" if key.startswith("data/") else "other"
        started = time.monotonic()
        try:
            return original(self, operation_name, api_params)
        finally:
            with lock:
                entry = totals.setdefault((operation_name, where), [0, 0.0])
                entry[0] += 1
                entry[1] += time.monotonic() - started

    BaseClient._make_api_call = timed_call
    return totals


def _override_settings(values: dict[str, str]) -> None:
    """Experiments: other defaults for `ProviderFeedsSettings` fields (`--setting NAME=VALUE`),
    as a deployment would configure them."""
    from credflow_assets.provider_feeds.settings import ProviderFeedsSettings

    for name, value in values.items():
        field = ProviderFeedsSettings.model_fields[name]
        field.default = type(field.default)(value)
    if values:
        ProviderFeedsSettings.model_rebuild(force=True)
        print(f"settings: {values}", flush=True)


# ------------------------------------------------------------------------------ baseline


def baseline(env: dict, names: list[str], work: Path, bucket: str, *,
             raw_copy: bool = False) -> dict:
    """sftp get (one session) → gpg --decrypt → gunzip → boto3 upload_file, file by file.
    With `raw_copy` (the "same work" chain), each encrypted file is also uploaded as it was
    downloaded, before it is decrypted, as credflow keeps its raw copy."""
    import boto3

    down = work / ("baseline-same-work" if raw_copy else "baseline")
    down.mkdir()
    remote_dir = f"{PROVIDER}/outbox"
    batch = down / "batch.txt"
    batch.write_text("".join(f"get {remote_dir}/{name} {down}/{name}\n" for name in names))
    stages = {}
    started = time.monotonic()
    cpu_before = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run(
        ["sftp", "-q", "-b", str(batch), "-P", env["CREDFLOW_SFTP_PORT"],
         "-i", env["CREDFLOW_SFTP_KEY_FILE"],
         "-o", f"UserKnownHostsFile={env['CREDFLOW_SFTP_KNOWN_HOSTS']}",
         "-o", "BatchMode=yes", f"{env['CREDFLOW_SFTP_USER']}@{env['CREDFLOW_SFTP_HOST']}"],
        check=True, stdout=subprocess.DEVNULL,
    )
    stages["sftp get"] = time.monotonic() - started
    stages["gpg --decrypt"] = stages["gunzip"] = stages["upload_file"] = 0.0
    if raw_copy:
        stages["upload_file (raw copy)"] = 0.0
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    prefix = "bench-same-work" if raw_copy else "bench-baseline"
    for name in names:
        encrypted = down / name
        gz = down / name.removesuffix(".gpg")
        if raw_copy:
            t = time.monotonic()
            client.upload_file(str(encrypted), bucket, f"{prefix}/raw/{name}")
            stages["upload_file (raw copy)"] += time.monotonic() - t
        t = time.monotonic()
        subprocess.run(
            ["gpg", "--homedir", env["CREDFLOW_GPG_HOME"], "--batch", "--yes", "--quiet",
             "--pinentry-mode", "loopback", "--passphrase", env["CREDFLOW_GPG_PASSPHRASE"],
             "--output", str(gz), "--decrypt", str(encrypted)],
            check=True, stderr=subprocess.DEVNULL,
        )
        encrypted.unlink()
        stages["gpg --decrypt"] += time.monotonic() - t
        t = time.monotonic()
        subprocess.run(["gunzip", "-f", str(gz)], check=True)
        stages["gunzip"] += time.monotonic() - t
        csv_path = down / name.removesuffix(".gz.gpg")
        t = time.monotonic()
        client.upload_file(str(csv_path), bucket, f"{prefix}/{csv_path.name}")
        stages["upload_file"] += time.monotonic() - t
        csv_path.unlink()
    cpu = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    return {"seconds": time.monotonic() - started, "stages": stages, "cpu_seconds": cpu}


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def service_cpu(state) -> dict[str, float]:
    """CPU seconds so far of the local S3 (moto) and sshd, with their exited children (sshd's
    session processes): the servers' side of the work, on the same 2 cores as the client's."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name in ("moto", "sshd"):
        with open(f"/proc/{state.services[name]['pid']}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        # after "pid (comm)": utime, stime, cutime, cstime are fields 14-17 of the full line
        seconds[name] = sum(int(value) for value in fields[11:15]) / ticks
    return seconds


def measured(state, work) -> tuple[Any, dict[str, float]]:
    """`work()`, and the CPU seconds moto and sshd spent meanwhile."""
    before = service_cpu(state)
    result = work()
    time.sleep(0.5)  # sshd reaps its session processes (their CPU joins its own) on exit
    after = service_cpu(state)
    return result, {name: after[name] - before[name] for name in after}


# ------------------------------------------------------------------------------ SFTP reads


def compare_sftp_reads(mib: int, rounds: int) -> None:
    """OpenSSH `sftp` against paramiko's ways of reading one file (see the module docstring)."""
    from credflow_assets.local import sshd

    print_machine()
    size = mib * MiB
    with bench_workdir("sftp-read") as work:
        server = sshd.start(work / "home")
        try:
            with open(Path(server["root"]) / "big.bin", "wb") as out:
                for _ in range(mib):
                    out.write(os.urandom(MiB))
            target = work / "out.bin"
            ways = _sftp_readers(server, target, size)
            results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in ways}
            for round_number in range(rounds):
                for label, read in ways:
                    if label.startswith("paramiko prefetch") and round_number:
                        continue  # once is enough: over a minute per 256 MiB (see RESULTS.md)
                    target.unlink(missing_ok=True)
                    cpu = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
                    started = time.monotonic()
                    read()
                    wall = time.monotonic() - started
                    cpu = (_cpu_seconds(resource.RUSAGE_SELF)
                           + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu)
                    if target.stat().st_size != size:
                        raise SystemExit(f"{label}: read {target.stat().st_size} of {size} bytes")
                    results[label].append((wall, cpu))
                    print(f"  {label}: {wall:.2f}s, CPU {cpu:.2f}s (load "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
        finally:
            os.kill(server["pid"], 15)
    rows = []
    for label, runs in results.items():
        walls, cpus = sorted(w for w, _ in runs), sorted(c for _, c in runs)
        rows.append([label, f"{walls[len(walls) // 2]:.2f}",
                     f"{size / MB / walls[len(walls) // 2]:.0f}", f"{cpus[len(cpus) // 2]:.2f}"])
    print(f"\nSFTP read of one {mib} MiB file, medians of {rounds} round(s), load at the end "
          f"{os.getloadavg()[0]:.1f}")
    print(table(["reader", "seconds", "MB/s", "CPU s"], rows))


def _sftp_readers(server: dict, target: Path, size: int) -> list:
    """(label, read) of each way compared; each reads `big.bin` into `target`."""
    from credflow_assets.resources.sftp import SftpResource
    from credflow_assets.resources.sftp import download as sftp_download

    def resource_of(**extra) -> SftpResource:
        return SftpResource(host=server["host"], port=server["port"], username=server["user"],
                            private_key_file=server["key_file"],
                            known_hosts_file=server["known_hosts"], **extra)

    def openssh() -> None:
        subprocess.run(
            ["sftp", "-q", "-P", str(server["port"]), "-i", server["key_file"],
             "-o", f"UserKnownHostsFile={server['known_hosts']}", "-o", "BatchMode=yes",
             f"{server['user']}@{server['host']}:big.bin", str(target)],
            check=True, stdout=subprocess.DEVNULL)

    def credflow(**extra) -> None:
        with resource_of(**extra).open_session() as session:
            session.download("big.bin", target)

    def before_session_8() -> None:
        saved = sftp_download.WINDOWS_IN_FLIGHT, sftp_download.WINDOW_BYTES
        sftp_download.WINDOWS_IN_FLIGHT, sftp_download.WINDOW_BYTES = 1, 8 * MiB
        try:
            credflow(read_request_size=32768)
        finally:
            sftp_download.WINDOWS_IN_FLIGHT, sftp_download.WINDOW_BYTES = saved

    def prefetch() -> None:
        with resource_of().open_session() as session:
            session.connect()
            with session._sftp.open("big.bin", "rb") as remote, open(target, "wb") as out:
                remote.prefetch(size)
                while data := remote.read(MiB):
                    out.write(data)

    return [("OpenSSH sftp (its own process, CPU of the client)", openssh),
            ("paramiko, 32 KiB requests, one 8 MiB window (before)", before_session_8),
            ("paramiko prefetch() of the whole file", prefetch),
            ("credflow now: 252 KiB requests, two 4 MiB windows", credflow)]


# ------------------------------------------------------------------------------ main


def credflow_under_daemon(work: Path, files: int, mode: str) -> dict:
    """The provider sensor and its runs under `dagster-daemon run` (see the docstring)."""
    import dagster as dg

    from credflow_assets.provider_feeds.names import job_name
    from credflow_assets_tests.test_production_celery import stop_every_sensor_but, stop_services
    from daemon_throughput import (
        BIN,
        TERMINAL,
        Environment,
        drop_celery_resources,
        mode_instance,
        start_daemon_services,
        wait,
    )

    from _common import _descendants, _processes, cpu_seconds_below, peak_rss_mb

    workers, queue, database, variables = mode_instance(work, mode, f"landing-{mode}")
    env = {**os.environ, **variables, "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    filters = dg.RunsFilter(job_name=job_name(PROVIDER))
    # The run processes' VmHWM, read at each poll: one that exits between two polls may have
    # peaked after the last reading, so this is a floor.
    services, peak_mb = [], 0.0
    with Environment(variables), dg.DagsterInstance.get() as instance:
        stop_every_sensor_but(instance, SENSOR)
        started = time.time()
        try:
            services = start_daemon_services(f"landing-{mode}", work, env, queue, workers)

            def all_finished():
                nonlocal peak_mb
                processes = _processes()
                for service in services:  # the run processes, each landing one file
                    for pid in _descendants(service.process.pid, processes):
                        peak_mb = max(peak_mb, peak_rss_mb(pid))
                records = instance.get_run_records(filters=filters)
                return (len(records) >= files and all(
                    record.dagster_run.status.value in TERMINAL
                    for record in records))

            wait(f"{files} landing runs to finish", all_finished, time.monotonic() + 1800,
                 services)
            cpu = sum(cpu_seconds_below(service.process.pid, including_root=True)
                      for service in services)
        finally:
            stop_services(services)
        records = instance.get_run_records(filters=filters)
        created = min(record.create_timestamp.timestamp() for record in records)
        ends = [record.end_time for record in records if record.end_time]
        failed = [f"{record.dagster_run.tags.get('dagster/partition')}: "
                  f"{record.dagster_run.status.value}" for record in records
                  if record.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
    if workers:  # the instance's connections let go first
        drop_celery_resources(queue, database)
    return {"sync_seconds": max(ends) - created, "first_run_after": created - started,
            "from_daemon_start": max(ends) - started, "runs": len(records), "failed": failed,
            "peak_rss_mb": peak_mb, "tree_peak_rss_mb": float("nan"),
            "cpu_seconds": cpu, "stages": {}, "s3_calls": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--total-mib", type=int, help="total encrypted MiB of the N files")
    parser.add_argument("--big-mib", type=int, help="the single file's MiB (0: skip)")
    parser.add_argument("--no-baseline", action="store_true", help="credflow only (experiments)")
    parser.add_argument("--same-work", action="store_true",
                        help="also run the chain with an upload_file of each encrypted file "
                        "(the raw copy credflow keeps), printed beside the issue's chain")
    parser.add_argument("--profile", help="write a profile of credflow's sync here: cProfile's "
                        "(main thread) for a name ending .pstats, else pyinstrument's")
    parser.add_argument("--no-drive-feeds", action="store_true",
                        help="experiment: the child builds its definitions without the drive "
                        "feeds (which import pandas and pandera), to measure their memory")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="experiment: another default for a provider_feeds setting "
                        "(ProviderFeedsSettings), e.g. raw_copy_single_put_mib=0")
    parser.add_argument("--daemon", nargs="?", const="default",
                        choices=["default", "celery1", "celery2"],
                        help="land the files under dagster-daemon instead of credflow sync: "
                        "the default run launcher (SQLite), or 1 or 2 Celery workers "
                        "(deploy/dagster.celery.yaml, PostgreSQL)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--sftp-read", type=int, metavar="MIB",
                        help="only compare SFTP reads of one MIB file (see the docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --sftp-read")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_credflow(json.loads(args.child))
        return
    if args.sftp_read:
        compare_sftp_reads(args.sftp_read, args.rounds)
        return

    total_mib = args.total_mib or (32 if args.quick else 1024)
    big_mib = args.big_mib if args.big_mib is not None else (64 if args.quick else 2048)
    info = print_machine()
    names = [f"roster_part{index:02d}.csv.gz.gpg" for index in range(args.files)]
    with bench_workdir("landing") as work, bench_stack(work) as (state, config, env):
        outbox = Path(env["CREDFLOW_SFTP_ROOT"]) / PROVIDER / "outbox"
        scratch = work / "scratch"
        scratch.mkdir()
        files = generate(outbox, scratch, Path(env["CREDFLOW_HOME"]),
                         [(name, total_mib * MiB // args.files) for name in names])
        encrypted = sum(f["encrypted_bytes"] for f in files.values())
        csv_bytes = sum(f["csv_bytes"] for f in files.values())

        same = None
        if args.no_baseline:
            base = {"seconds": float("nan"), "stages": {}, "service_cpu": {}}
        else:
            print(f"\n== baseline: sftp → gpg → gunzip → upload_file ({len(names)} files)")
            base, base["service_cpu"] = measured(
                state, lambda: baseline(env, names, work, config.buckets.provider_data))
            print(f"   {base['seconds']:.1f}s")
        if args.same_work and not args.no_baseline:
            print(f"\n== same work: the chain plus upload_file of each encrypted file")
            same, same["service_cpu"] = measured(state, lambda: baseline(
                env, names, work, config.buckets.provider_data, raw_copy=True))
            print(f"   {same['seconds']:.1f}s")

        settings = dict(item.split("=", 1) for item in args.setting)
        if args.daemon:
            print(f"\n== credflow under dagster-daemon ({args.daemon}): sensor → raw → landed "
                  f"({len(names)} files)")
            cred, cred["service_cpu"] = measured(state, lambda: credflow_under_daemon(
                work, len(names), args.daemon))
            print(f"   first run {cred['first_run_after']:.1f}s after the daemon's start; first "
                  f"run → last end {cred['sync_seconds']:.1f}s")
        else:
            print(f"\n== credflow: sensor → raw → landed ({len(names)} files)")
            options = {"profile": args.profile, "no_drive_feeds": args.no_drive_feeds,
                       "settings": settings}
            cred, cred["service_cpu"] = measured(
                state, lambda: run_child([__file__, "--child", json.dumps(options)]))
            print(f"   sync {cred['sync_seconds']:.1f}s, child wall {cred['wall_seconds']:.1f}s")
        if cred["failed"]:
            raise SystemExit(f"credflow runs failed: {cred['failed']}")

        big = None
        if big_mib and not args.daemon:
            for name in names:
                (outbox / name).unlink()
            print(f"\n== credflow: one {big_mib:,} MiB file")
            big_files = generate(outbox, scratch, Path(env["CREDFLOW_HOME"]),
                                 [("roster_big.csv.gz.gpg", big_mib * MiB)])
            big = run_child([__file__, "--child",
                             json.dumps({"no_drive_feeds": args.no_drive_feeds,
                                         "settings": settings})])
            if big["failed"]:
                raise SystemExit(f"credflow run failed: {big['failed']}")
            big["encrypted_bytes"] = big_files["roster_big.csv.gz.gpg"]["encrypted_bytes"]

    base_rate = encrypted / MB / base["seconds"]
    cred_rate = encrypted / MB / cred["sync_seconds"]
    rows = [
        ["baseline: sftp, gpg, gunzip, upload_file", f"{encrypted / MiB:,.0f} MiB",
         base["seconds"], base_rate, "1.00", "-"],
        [f"credflow: daemon ({args.daemon}), first run → last end" if args.daemon
         else "credflow: sync (tick + raw + landed runs)", f"{encrypted / MiB:,.0f} MiB",
         cred["sync_seconds"], cred_rate, f"{cred_rate / base_rate:.2f}",
         f"{cred['peak_rss_mb']:.0f} MB"],
    ]
    if same:
        same_rate = encrypted / MB / same["seconds"]
        rows.insert(1, ["same work (not the issue's baseline): the chain + upload_file of "
                        "each encrypted file", f"{encrypted / MiB:,.0f} MiB", same["seconds"],
                        same_rate, f"{same_rate / base_rate:.2f}", "-"])
        rows[-1][4] += f" ({cred_rate / same_rate:.2f} against the same work)"
    if big:
        big_rate = big["encrypted_bytes"] / MB / big["sync_seconds"]
        rows.append([f"credflow: one {big_mib:,} MiB file", f"{big['encrypted_bytes'] / MiB:,.0f} MiB",
                     big["sync_seconds"], big_rate, "-", f"{big['peak_rss_mb']:.0f} MB"])
    print(f"\nProvider landing: {len(names)} encrypted gzip CSV files, {encrypted / MiB:,.0f} MiB "
          f"encrypted, {csv_bytes / MiB:,.0f} MiB of CSV")
    print(table(["pipeline", "input", "seconds", "MB/s", "ratio", "peak RSS"], rows))
    print("\nbaseline stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in base["stages"].items()))
    if same:
        print("same-work chain stages (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in same["stages"].items()))
    print("credflow stages (s, summed over runs): "
          + ", ".join(f"{k} {v:.1f}" for k, v in cred["stages"].items()))
    overhead = cred["sync_seconds"] - sum(value for label, value in cred["stages"].items()
                                          if "(within upload)" not in label
                                          and "(alongside" not in label)
    print(f"credflow outside the timed stages (tick, settle, hashing, Dagster): {overhead:.1f}s")
    print("credflow's S3 calls (count × wall s, summed over threads): " + ", ".join(
        f"{name} {count}×{seconds:.1f}" for name, (count, seconds) in cred["s3_calls"].items()
        if seconds >= 0.05))
    print(f"credflow child: peak RSS {cred['peak_rss_mb']:.0f} MB (VmHWM), process tree "
          f"{cred['tree_peak_rss_mb']:.0f} MB (sampled, incl. gpg)")
    if big:
        print(f"big file: peak RSS {big['peak_rss_mb']:.0f} MB (VmHWM), tree "
              f"{big['tree_peak_rss_mb']:.0f} MB; stages: "
              + ", ".join(f"{k} {v:.1f}" for k, v in big["stages"].items()))
    print(f"CPU seconds: baseline {base.get('cpu_seconds', float('nan')):.1f} (sftp, gpg, gunzip, "
          f"boto3), credflow {cred['cpu_seconds']:.1f} (child and its gpg); load at the end "
          f"{os.getloadavg()[0]:.1f}")
    for label, half in (("baseline", base), ("same work", same or {}), ("credflow", cred)):
        services = half.get("service_cpu") or {}
        if services:
            client = half.get("cpu_seconds", float("nan"))
            print(f"CPU seconds with the servers, {label}: client {client:.1f} + moto "
                  f"{services['moto']:.1f} + sshd {services['sshd']:.1f} = "
                  f"{client + sum(services.values()):.1f}")
    if same:
        print(f"against the same work (not the issue's target): "
              f"{cred_rate / (encrypted / MB / same['seconds']):.2f}")
    print(f"targets: ratio ≥ 1.2 → {cred_rate / base_rate:.2f}; peak RSS ≤ 250 MB → "
          f"{max([cred['peak_rss_mb']] + ([big['peak_rss_mb']] if big else [])):.0f} MB")
    write_json(args.json, {"machine": info, "files": len(names), "encrypted_bytes": encrypted,
                           "csv_bytes": csv_bytes, "baseline": base, "credflow": cred,
                           "same_work": same, "big": big, "ratio": cred_rate / base_rate})


if __name__ == "__main__":
    main()
