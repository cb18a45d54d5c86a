"""`archive-partitions [--older-than 365d] [--dry-run] [--json]`: keep each flow's partition sets
under Dagster's partition budget by archiving the partitions of files processed long ago
(common/partition_archive.py says what is archived, where, and how lineage still answers).

A command object for the `credflow instance` group (the lead registers it there).
"""

from __future__ import annotations

import json

import click

from credflow_assets.common.command_context import CommandContext


@click.command("archive-partitions")
@click.option("--older-than", default="365d", show_default=True,
              help="Archive files whose processing finished longer ago than this "
                   "(d, w or h: 365d, 52w, 0d).")
@click.option("--dry-run", is_flag=True, help="Say what would be archived; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON, with every key.")
@click.pass_obj
def archive_partitions_command(context: CommandContext, older_than: str, dry_run: bool,
                               as_json: bool) -> None:
    """Archive the partitions of files processed long ago, keeping failed ones.

    The keys leave the instance's dynamic partitions (the UI's partition pages); their runs,
    materializations, parse logs and error reports stay, and `credflow lineage KEY` still
    answers. `credflow reparse --partition KEY` brings one back.
    """
    from credflow_assets.common.partition_archive import (
        archive_partitions,
        parse_age,
        partition_sets,
    )
    from credflow_assets.flows import all_flows

    try:
        age = parse_age(older_than)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--older-than") from None
    context.adopt_stack_environment()
    config = context.config()
    with context.instance() as instance:
        report = archive_partitions(
            instance, partition_sets(all_flows(), config), age, dry_run=dry_run,
            progress=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    verb = "would archive" if dry_run else "archived"
    for name, keys in report.archived.items():
        kept = ", ".join(f"{count:,} {reason}" for reason, count in report.kept[name].items())
        click.echo(f"{name:32} {verb} {len(keys):,}" + (f"; kept: {kept}" if kept else ""))
    click.echo(f"{verb} {report.total_archived:,} partition(s) of files processed before "
               f"{report.cutoff:%Y-%m-%d %H:%M} UTC in {report.seconds:.1f}s"
               + ("" if dry_run or not report.total_archived
                  else "; `credflow lineage KEY` still answers for each"))
