"""`credflow instance …`: keeping the Dagster instance itself in shape.

`prune` deletes what only debugging needs from old runs and old ticks, as the scheduled
`instance_retention_job` does (common/instance_retention.py says what stays).
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
