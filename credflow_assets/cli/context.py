"""The `credflow` command's context object: what every command, a flow's too, gets through
`@click.pass_obj` (a flow's commands see it as `common.command_context.CommandContext`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from credflow_assets.common.command_context import JobRun
from credflow_assets.config import ConfigError, load_config, resolve_config_path

NO_DAGSTER_HOME = "DAGSTER_HOME is not set: start the local stack (`credflow local up`) or set it"


class CliContext:
    """The root options (`--config`, `--home`) and what follows from them."""

    def __init__(self, config_path: str | None, home: str | None):
        self._config_path = config_path
        self._home = home

    @property
    def config_path(self) -> Path:
        return resolve_config_path(self._config_path)

    @property
    def home(self) -> Path:
        from credflow_assets.local.stack import stack_home

        return stack_home(self._home)

    def config(self):
        try:
            return load_config(self.config_path)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None

    def resources(self, *names: str):
        """Initialized resources (env settings resolved), as a Dagster run would get them.

        As in any non-asset context, dagster-aws hands out `s3` as the boto3 client itself.
        """
        import dagster as dg

        from credflow_assets.resources.from_config import build_resources

        available = build_resources(self.config())
        return dg.build_resources({name: available[name] for name in names})

    @contextmanager
    def instance(self, *, required: bool = True) -> Iterator:
        if not os.environ.get("DAGSTER_HOME"):
            if required:
                raise click.ClickException(NO_DAGSTER_HOME)
            yield None
            return
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            yield instance

    def run_job(self, job_name: str, run_config: dict | None = None) -> JobRun:
        from credflow_assets.cli.sync import execution_run_config, failure_reason
        from credflow_assets.common.dagster_compat import execute_run_in_process
        from credflow_assets.common.run_recovery import process_tags
        from credflow_assets.definitions import build_definitions

        with self.instance() as instance:
            defs = build_definitions(self.config())
            result = execute_run_in_process(
                defs, instance, job_name,
                run_config=execution_run_config(run_config, verbose=False),
                # A run in this process: should the process die, `fail_stopped_runs` finds it.
                tags=process_tags(),
            )
        return JobRun(run_id=result.run_id, success=result.success,
                      events=list(result.all_events),
                      failure=None if result.success else failure_reason(result))

    def adopt_stack_environment(self) -> None:
        """When the local stack is up, point everything at it (explicit variables still win)."""
        from credflow_assets.local.stack import StackState, environment

        state = StackState.load(self.home)
        if state is None or not all(state.running(name) for name in state.services):
            return
        if not state.services:
            return
        for name, value in environment(state, self.config()).items():
            os.environ.setdefault(name, value)
