"""The staged-tables flow's commands: `credflow tables audit`.

The `credflow` command registers `COMMANDS` (`credflow_assets/flows.py`) and hands each command
its context object (`common.command_context.CommandContext`). Heavy imports wait for the command
to run: `credflow --help` imports this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from credflow_assets.common.command_context import CommandContext


@click.group("tables")
def tables() -> None:
    """Staged tables: analysts' CSVs in staging/ → prod/ → Glue."""


@tables.command("audit")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the JSON report to this file.")
@click.option("--fix", is_flag=True,
              help="Register missing Glue partitions and remove dangling ones (nothing else; "
              "files are never touched).")
@click.pass_obj
def audit(context: CommandContext, as_json: bool, output: str | None, fix: bool) -> None:
    """Report, per table: files whose columns disagree with the table, prod files missing from
    Glue partitions, partitions pointing at missing objects, staged files never processed.

    Changes nothing unless --fix. Exits 1 while any finding is open.
    """
    from credflow_assets.staged_tables.audit import audit_staged_tables, fix_staged_tables
    from credflow_assets.staged_tables.settings import settings_from_config

    context.adopt_stack_environment()
    flow = settings_from_config(context.config())
    # The instance, when DAGSTER_HOME is set, tells uploads a run has processed.
    with (context.resources("s3", "glue") as resources,
          context.instance(required=False) as instance):
        report = audit_staged_tables(resources.s3, resources.glue, flow.layout,
                                     flow.glue_database, instance=instance)
        if fix:
            fix_staged_tables(resources.glue, flow.layout, flow.glue_database, report)
    data = report.to_dict()
    if output:
        Path(output).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo("\n".join(report.table_lines()))
    sys.exit(0 if report.is_clean else 1)


COMMANDS = [tables]
