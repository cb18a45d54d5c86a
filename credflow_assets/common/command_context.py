"""What a flow's commands (its `commands.py`) get from the `credflow` command.

The root group (`credflow_assets/cli/`) puts one object on click's context; a flow command
takes it with `@click.pass_obj`. Through it the command reads the config, gets initialized
resources and the Dagster instance, and runs one of its jobs in this process, without
importing the CLI, the local stack or the resource factory (DESIGN.md: imports point one way).

Nothing here imports Dagster or click at module level: `credflow --help` imports every flow's
commands module.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig


@dataclass(frozen=True)
class JobRun:
    """A job run executed in this process, as `CommandContext.run_job` reports it."""

    run_id: str
    success: bool
    events: list[dg.DagsterEvent]  # every event of the run, as the instance stored them
    failure: str | None  # why it failed (its first step failure), None when it succeeded


class CommandContext(Protocol):
    """The `credflow` command's context object, as a flow's commands use it."""

    def adopt_stack_environment(self) -> None:
        """When the local stack is up, point this process at it (variables already set win).
        A flow command calls it first, as every `credflow` command that reaches a service does."""

    def config(self) -> CredflowConfig:
        """The config file (`--config`, `$CREDFLOW_CONFIG` or ./credflow.yaml), validated; a
        click error naming the problem when it is invalid."""

    def resources(self, *names: str) -> AbstractContextManager[Any]:
        """The named resources, initialized as a run would get them (`with … as resources:
        resources.drive`). As in any non-asset context, `s3` is the boto3 client itself."""

    def instance(self, *,
                 required: bool = True) -> AbstractContextManager[dg.DagsterInstance | None]:
        """The Dagster instance of `$DAGSTER_HOME`. Unset: a click error telling how to set it,
        or None when not `required`."""

    def run_job(self, job_name: str, run_config: dict | None = None) -> JobRun:
        """Execute one job of the code location in this process, against the instance, as
        `credflow sync` runs its jobs (the UI lists the run under its job; should this process
        die, the next sync fails the run it left started). Dagster's console log is quiet."""
