"""`credflow instance …`: keeping the Dagster instance itself in shape.

`prune` deletes what only debugging needs from old runs and old ticks, and
`archive-partitions` archives the partitions of files processed long ago (Dagster's partition
budget), as the scheduled `instance_retention_job` does (common/instance_retention.py and
common/partition_archive.py say what stays).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import click

from credflow_assets.cli.context import CliContext

_AGE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age_option(context, parameter, text: str | None) -> timedelta | None:
    return None if text is None else parse_age(text)


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `0s` (0: everything finished until now) as a timedelta."""
    match = _AGE.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not an age: write a whole number and a unit, "
                                 "s, m, h or d, e.g. 30d, 12h or 0d (everything until now)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@click.group("instance")
def instance() -> None:
    """The Dagster instance's own upkeep (runs, event logs, ticks)."""


@instance.command("prune")
@click.option("--older-than", "older_than", metavar="AGE", callback=_age_option,
              help="Prune runs that finished longer ago than this (30d, 12h, 0d) "
              "[default: retention.run_events_days of the config file].")
@click.option("--ticks-older-than", "ticks_older_than", metavar="AGE", callback=_age_option,
              help="Delete sensor and schedule ticks older than this "
              "[default: retention.ticks_days].")
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def prune(settings: CliContext, older_than: timedelta | None, ticks_older_than: timedelta | None,
          dry_run: bool, as_json: bool) -> None:
    """Delete old runs' log lines, step events and captured stdout/stderr, and old ticks.

    Runs keep their status, tags, failure reasons, materializations and check results, so
    `credflow lineage` and the UI's partition pages answer as before.
    """
    settings.adopt_stack_environment()
    from credflow_assets.common.instance_retention import prune_instance

    retention = settings.config().retention
    events_age = retention.run_events_age if older_than is None else older_than
    ticks_age = retention.ticks_age if ticks_older_than is None else ticks_older_than
    # Progress goes to stderr, so that --json's stdout stays one document.
    progress = (lambda line: click.echo(line, err=True))
    with settings.instance() as dagster_instance:
        report = prune_instance(dagster_instance, events_age, ticks_older_than=ticks_age,
                                dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.summary())


@instance.command("archive-partitions")
@click.option("--older-than", "older_than", metavar="AGE", callback=_age_option,
              help="Archive files whose processing finished longer ago than this (365d, 0d) "
              "[default: retention.archive_partitions_days of the config file].")
@click.option("--dry-run", is_flag=True, help="Say what would be archived; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON, with every key.")
@click.pass_obj
def archive_partitions_command(settings: CliContext, older_than: timedelta | None, dry_run: bool,
                               as_json: bool) -> None:
    """Archive the partitions of files processed long ago, keeping failed ones.

    The keys leave the instance's dynamic partitions (the UI's partition pages); their runs,
    materializations, parse logs and error reports stay, and `credflow lineage KEY` still
    answers. `credflow reparse --partition KEY` brings one back.
    """
    settings.adopt_stack_environment()
    from credflow_assets.common.partition_archive import archive_partitions, partition_sets
    from credflow_assets.flows import all_flows

    config = settings.config()
    age = config.retention.archive_partitions_age if older_than is None else older_than
    with settings.instance() as dagster_instance:
        report = archive_partitions(
            dagster_instance, partition_sets(all_flows(), config), age, dry_run=dry_run,
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
