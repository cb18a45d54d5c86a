"""A small code location for the run-recovery tests: a sensor over an inbox folder and an asset
that copies each file, which a test can make hang (to kill its process) or fail.

- `hang`: the run waits for `{outbox}/release` (a test kills the process meanwhile);
- `flaky`: raises ConnectionError (transient) until `{outbox}/up` exists;
- `broken`: raises a permanent `dg.Failure`.

`python -m credflow_assets_tests.faults.run_recovery_location INBOX OUTBOX` runs one `credflow sync`
over it against $DAGSTER_HOME, as `credflow sync` does.
"""

import json
import sys
import time
from pathlib import Path

import dagster as dg

from credflow_assets.common.run_recovery import mark_transient_failures

inbox_files = dg.DynamicPartitionsDefinition(name="recovery_inbox_files")


class Folders(dg.ConfigurableResource):
    inbox: str
    outbox: str


@dg.asset(partitions_def=inbox_files)
def copied(context: dg.AssetExecutionContext, folders: Folders) -> None:
    text = (Path(folders.inbox) / context.partition_key).read_text()
    outbox = Path(folders.outbox)
    if text == "hang":
        (outbox / f"{context.partition_key}.started").write_text(context.run.run_id)
        while not (outbox / "release").exists():
            time.sleep(0.1)
    if text == "flaky" and not (outbox / "up").exists():
        raise ConnectionError("the server closed the connection")
    if text == "broken":
        raise dg.Failure(f"{context.partition_key}: the file is broken; upload a corrected one")
    with open(outbox / context.partition_key, "a") as out:  # appends: a second copy shows
        out.write(text.upper())


copy_job = dg.define_asset_job("copy_job", selection=[copied],
                               executor_def=dg.in_process_executor,
                               hooks={mark_transient_failures})


@dg.sensor(job=copy_job)
def inbox_sensor(context: dg.SensorEvaluationContext, folders: Folders) -> dg.SensorResult:
    seen = set(json.loads(context.cursor or "[]"))
    new = sorted(p.name for p in Path(folders.inbox).iterdir() if p.name not in seen)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=name) for name in new],
        dynamic_partitions_requests=[inbox_files.build_add_request(new)] if new else [],
        cursor=json.dumps(sorted(seen | set(new))),
    )


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING)
def told_failures(context: dg.RunFailureSensorContext, folders: Folders) -> None:
    """Notes each failed run it sees, as the failure notifications tell each one."""
    partition = context.dagster_run.tags.get("dagster/partition", "?")
    (Path(folders.outbox) / f"{partition}.told").write_text(context.dagster_run.run_id)


def definitions(inbox: str, outbox: str) -> dg.Definitions:
    return dg.Definitions(assets=[copied], jobs=[copy_job], sensors=[inbox_sensor, told_failures],
                          resources={"folders": Folders(inbox=inbox, outbox=outbox)})


if __name__ == "__main__":
    from credflow_assets.cli.sync import sync

    with dg.DagsterInstance.get() as instance:
        sync(definitions(sys.argv[1], sys.argv[2]), instance)
