"""The therapist flow's commands: `credflow mpf audit` and `credflow mpf repair`
(`credflow lineage THERAPIST_ID`, with every other file's, is `cli/lineage.py`).

The `credflow` command registers `COMMANDS` (`credflow_assets/flows.py`) and hands each command
its context object (`common.command_context.CommandContext`). Heavy imports wait for the command
to run: `credflow --help` imports this module.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from credflow_assets.common.command_context import CommandContext


@click.group()
def mpf() -> None:
    """Magically Processed Folders: audit and repair."""


@mpf.command("audit")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def mpf_audit(context: CommandContext, as_json: bool) -> None:
    """List misplaced files, nested, duplicate and id-less folders, and missing uploads.

    Exits 1 when there is anything to repair.
    """
    context.adopt_stack_environment()
    from credflow_assets.therapists.mpf_audit import audit_mpf

    config = context.config()
    with context.resources("drive", "s3") as resources:
        report = audit_mpf(resources.drive, config.drive.mpf_root_folder_id,
                           s3_client=resources.s3,
                           signup_bucket=config.buckets.signup)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo("\n".join(report.summary_lines()) or "the MPF is clean")
    sys.exit(0 if report.is_clean else 1)


@mpf.command("repair")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.pass_obj
def mpf_repair(context: CommandContext, dry_run: bool) -> None:
    """Fix what `credflow mpf audit` finds: move files, un-nest folders, merge duplicates.

    Runs the `mpf_repair_job` here, in-process: the UI lists the run under the job, with its
    actions. After a repair, each repaired therapist's `mpf_audit` verdict is recorded anew.
    """
    context.adopt_stack_environment()
    from credflow_assets.therapists.names import (
        MPF_AUDIT_CHECK,
        REPAIR_JOB_NAME,
        REPAIR_OP_NAME,
    )
    from credflow_assets.therapists.repair_job import repair_outcome

    run = context.run_job(REPAIR_JOB_NAME,
                          {"ops": {REPAIR_OP_NAME: {"config": {"dry_run": dry_run}}}})
    outcome = repair_outcome(run.events) if run.success else None
    if outcome is None:
        raise click.ClickException(
            f"{REPAIR_JOB_NAME} failed: {run.failure or 'its run reported no repair outcome'} "
            f"(run {run.run_id})")
    prefix = "would: " if dry_run else ""
    for action in outcome.actions:
        click.echo(f"{prefix}{action}")
    click.echo(f"{len(outcome.actions)} action(s){' planned' if dry_run else ''}")
    if outcome.verdicts_recorded is not None:
        click.echo(f"{MPF_AUDIT_CHECK} verdicts recorded for {outcome.verdicts_recorded} "
                   "therapist(s)")


COMMANDS = [mpf]
