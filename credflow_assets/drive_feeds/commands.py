"""The Drive feeds flow's commands: `credflow feeds status`.

The `credflow` command registers `COMMANDS` (`credflow_assets/flows.py`) and hands each command
its context object (`common.command_context.CommandContext`). Heavy imports wait for the command
to run: `credflow --help` imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from credflow_assets.common.command_context import CommandContext


@click.group()
def feeds() -> None:
    """Drive inbound feeds."""


@feeds.command("status")
@click.pass_obj
def feeds_status(context: CommandContext) -> None:
    """Each feed's table, latest processed files and outbound summaries."""
    context.adopt_stack_environment()
    from credflow_assets.drive_feeds.status import feed_status_lines

    with context.resources("drive", "tables_db") as resources:
        for line in feed_status_lines(context.config(), resources.tables_db.get_engine(),
                                      resources.drive):
            click.echo(line)


COMMANDS = [feeds]
