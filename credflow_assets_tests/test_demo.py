"""The `make demo` sequence through the `credflow` command, on a stack of its own.

Seed the old system's MPF mess, process the uploads, audit, repair, audit again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from credflow_assets_tests.conftest import DEFAULT_CONFIG

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo") / "home"
    assert credflow(home, "local", "up").returncode == 0
    yield home
    credflow(home, "local", "down")


def credflow(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(home), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG),
           # The command runs the code under test (a worktree's, on PYTHONPATH), not the
           # checkout the virtualenv's editable install points at.
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    return subprocess.run([str(BIN / "credflow"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_seed_sync_audit_repair(home):
    seeded = credflow(home, "local", "seed")
    assert seeded.returncode == 0, seeded.stderr
    assert "old system" in seeded.stdout

    before = credflow(home, "mpf", "audit", "--json")
    assert before.returncode == 1, before.stderr
    kinds = {finding["kind"] for finding in json.loads(before.stdout)["findings"]}
    assert {"misplaced_file", "nested_folder", "duplicate_folder", "folder_without_id",
            "missing_file"} <= kinds

    synced = credflow(home, "sync")
    # The demo's one wrong-columns CSV is rejected on purpose; everything else goes through.
    assert synced.returncode == 1, synced.stdout + synced.stderr
    assert "1 failed" in synced.stdout
    failed = [line for line in synced.stdout.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed) == 1 and "claims_wrong_columns" in failed[0], failed
    # What a person reads: the file and the problem, no stack trace, no exception class.
    assert "columns out of order: last_name, first_name" in failed[0]
    terminal = synced.stdout + synced.stderr
    assert "Stack Trace" not in terminal and "Traceback" not in terminal
    assert "dagster._core" not in terminal

    audit = credflow(home, "mpf", "audit", "--json")
    assert audit.returncode == 1, audit.stderr
    findings = json.loads(audit.stdout)
    kinds = {finding["kind"] for finding in findings["findings"]}
    # The sync found O'Brien's twin folders by id and merged them; every upload is now in an
    # MPF folder. The old system's nesting and id-less folders are the repair's work.
    assert {"nested_folder", "folder_without_id"} <= kinds
    assert not kinds & {"duplicate_folder", "missing_file"}

    planned = credflow(home, "mpf", "repair", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("would: ")
    assert json.loads(credflow(home, "mpf", "audit", "--json").stdout) == findings

    repaired = credflow(home, "mpf", "repair")
    assert repaired.returncode == 0, repaired.stderr
    after = credflow(home, "mpf", "audit")
    assert after.returncode == 0, after.stdout
    assert "clean" in after.stdout

    again = credflow(home, "mpf", "repair")
    assert "0 action(s)" in again.stdout
    # Each therapist's partition shows the audit's verdict after the repair.
    assert "mpf_audit verdicts recorded for" in repaired.stdout
    assert latest_mpf_verdicts(home) and all(latest_mpf_verdicts(home).values())
    # Each `credflow mpf repair` left a run of the repair job that the UI lists under the job,
    # its actions in the output's metadata.
    assert repair_runs(home) == [("SUCCESS", True, True), ("SUCCESS", False, True),
                                 ("SUCCESS", False, False)]
    # The asset graph shows no failed partition but the staged file that is really rejected.
    assert failed_partitions(home) == {
        "s3/prod/claims_prod_csv": ["staging/claims/2024-04_claims_wrong_columns.csv"],
        "glue/credflow_adhoc/claims": ["staging/claims/2024-04_claims_wrong_columns.csv"]}

    lineage = credflow(home, "lineage", "t-1001")
    assert lineage.returncode == 0 and "t-1001/" in lineage.stdout

    resynced = credflow(home, "sync")
    assert "sync: 0 run(s)" in resynced.stdout, resynced.stdout

    tables = credflow(home, "tables", "audit", "--json")
    assert "claims_wrong_columns" in tables.stdout


def _instance(home: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home / "dagster"))


def latest_mpf_verdicts(home: Path) -> dict[str, bool]:
    """Each therapist partition's latest `mpf_audit` verdict (passed or not), from the check's
    execution history, as the UI's check pages read it."""
    import dagster as dg

    from credflow_assets.therapists.names import MPF_AUDIT_CHECK, MPF_FOLDER_KEY

    verdicts: dict[str, bool] = {}
    with _instance(home) as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(MPF_FOLDER_KEY, MPF_AUDIT_CHECK), limit=10_000)
        for record in history:  # newest first
            if record.event is not None and record.partition not in verdicts:
                verdicts[record.partition] = \
                    record.event.dagster_event.event_specific_data.passed
    return verdicts


def repair_runs(home: Path) -> list[tuple[str, bool, bool]]:
    """The repair job's runs, oldest first: status, whether it was a dry run, and whether it
    did anything; each must belong to the code location the UI loads."""
    import dagster as dg

    from credflow_assets.common.dagster_compat import LOCATION_NAME
    from credflow_assets.therapists.names import REPAIR_JOB_NAME
    from credflow_assets.therapists.repair_job import ACTIONS_METADATA

    found = []
    with _instance(home) as instance:
        for run in reversed(instance.get_runs(filters=dg.RunsFilter(job_name=REPAIR_JOB_NAME))):
            assert run.remote_job_origin.location_name == LOCATION_NAME
            outputs = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
            metadata = outputs[0].dagster_event.step_output_data.metadata
            found.append((run.status.value, metadata["dry_run"].value,
                          bool(metadata[ACTIONS_METADATA].value)))
    return found


def failed_partitions(home: Path) -> dict[str, list[str]]:
    """Every partitioned asset's failed partitions, as the UI's asset graph counts them."""
    import dagster as dg

    from credflow_assets.config import load_config
    from credflow_assets.definitions import build_definitions

    graph = build_definitions(load_config(DEFAULT_CONFIG)).get_repository_def().asset_graph
    failed = {}
    with _instance(home) as instance:
        for key in graph.get_all_asset_keys():
            partitions_def = graph.get(key).partitions_def
            if partitions_def is None:
                continue
            statuses = instance.get_status_by_partition(
                key, instance.get_dynamic_partitions(partitions_def.name), partitions_def)
            bad = sorted(partition for partition, status in statuses.items()
                         if status == dg.AssetPartitionStatus.FAILED)
            if bad:
                failed[key.to_user_string()] = bad
    return failed
