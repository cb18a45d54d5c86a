"""The MPF repair as a Dagster job: `mpf_repair_job`, one run over the whole MPF.

Launched from the UI (the Launchpad's `dry_run: true` plans and changes nothing) or by
`credflow mpf repair [--dry-run]`, which executes it in its own process. Either way the run is
listed under the job, and its output's metadata holds the repair's actions: what was done,
skipped or left for a person, or, in a dry run, planned.

One run repairs the whole MPF rather than one therapist per partition: the old system's mess
spans therapists (Lamb's files in Lambert's folder, Adams nested in Abdullah), and the plan
needs the whole tree the audit walked (`audit_mpf`) to move a file from one therapist's folder
into another's. So the run carries no therapist tag and does not wait on the one-run-per-
therapist limit: every step re-reads what it touches before acting, so a therapist's run going
on meanwhile is safe (mpf_audit/executor.py), and a second repair finds nothing left to do.

After a repair that acted, each therapist its findings named is audited again and the verdict
recorded on their partition's `mpf_audit` check (checks.py), so the UI shows the verdict after
the repair, not the one their last run recorded.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.messages import markdown_table
from credflow_assets.resources.drive import DriveResource
from credflow_assets.resources.sql import SqlResource
from credflow_assets.common.run_recovery import mark_transient_failures
from credflow_assets.therapists.checks import record_verdicts_after_repair
from credflow_assets.therapists.mpf_audit import (
    RepairAction,
    audit_mpf,
    repair_mpf,
    therapist_resolver,
)
from credflow_assets.therapists.names import REPAIR_JOB_NAME, REPAIR_OP_NAME
from credflow_assets.therapists.settings import TherapistFlowSettings

# The output metadata `credflow mpf repair` reads back (`repair_outcome`).
ACTIONS_METADATA = "actions"
VERDICTS_METADATA = "verdicts_recorded"


class MpfRepairConfig(dg.Config):
    dry_run: bool = False  # say what the repair would do; change nothing


@dg.op(name=REPAIR_OP_NAME, out=dg.Out(dg.Nothing),
       description="Audit the whole MPF, then fix what the audit found: un-nest folders, merge "
       "twins, adopt or empty id-less folders, move misplaced files (`dry_run`: plan only).")
def mpf_repair(
    context: dg.OpExecutionContext,
    config: MpfRepairConfig,
    drive: DriveResource,
    s3: S3Resource,
    directory_db: SqlResource,
    therapist_settings: TherapistFlowSettings,
) -> dg.Output:
    root_id, bucket = therapist_settings.mpf_root_folder_id, therapist_settings.signup_bucket
    client = s3.get_client()
    report = audit_mpf(drive, root_id, s3_client=client, signup_bucket=bucket)
    context.log.info(report.summary_lines()[0])
    actions = repair_mpf(drive, root_id, report, dry_run=config.dry_run,
                         resolve_therapist=therapist_resolver(directory_db.get_engine()))
    recorded = None
    if actions and not config.dry_run:
        recorded = record_verdicts_after_repair(context.instance, drive, root_id,
                                                report.findings, client, bucket)
    by_status = Counter(action.status for action in actions)
    context.log.info(f"{len(actions)} action(s): " + (", ".join(
        f"{count} {status}" for status, count in sorted(by_status.items())) or "nothing to do"))
    return dg.Output(None, metadata=_repair_metadata(actions, config.dry_run,
                                                     len(report.findings), recorded))


def _repair_metadata(actions: list[RepairAction], dry_run: bool, findings: int,
                     recorded: int | None) -> dict:
    metadata = {
        "summary": f"{len(actions)} action(s){' planned' if dry_run else ''}",
        "dry_run": dry_run,
        "findings": findings,
        "drive_changes": sum(1 for action in actions if action.changes_drive),
        ACTIONS_METADATA: dg.MetadataValue.json([action.to_dict() for action in actions]),
        "actions_table": dg.MetadataValue.md(markdown_table(
            ["kind", "status", "therapist", "action"],
            [[action.kind, action.status, action.therapist_id or "", action.sentence]
             for action in actions])),
    }
    if recorded is not None:
        metadata[VERDICTS_METADATA] = recorded
    return metadata


@dg.job(name=REPAIR_JOB_NAME, executor_def=dg.in_process_executor,
        hooks={mark_transient_failures},
        description="Audit the whole MPF and repair it (config `dry_run: true`: plan only). "
        "The actions are the output's metadata.")
def mpf_repair_job():
    mpf_repair()


@dataclass
class RepairOutcome:
    """What a repair run did, read back from its events."""

    actions: list[RepairAction]
    verdicts_recorded: int | None  # None: no verdict recorded (a dry run, or nothing to do)


def repair_outcome(events: Iterable[dg.DagsterEvent]) -> RepairOutcome | None:
    """The repair's outcome from its run's events; None when the run produced none (it failed)."""
    for event in events:
        if (event.is_successful_output
                and ACTIONS_METADATA in event.step_output_data.metadata):
            metadata = event.step_output_data.metadata
            recorded = metadata.get(VERDICTS_METADATA)
            return RepairOutcome(
                actions=[RepairAction.from_dict(data)
                         for data in metadata[ACTIONS_METADATA].value],
                verdicts_recorded=None if recorded is None else recorded.value,
            )
    return None
