"""The `credflow` command's shape: the root's own commands and each flow's (its commands.py, read
from the registry of flows), a help that stays fast, and a flow command that gets all it needs
from the context object. No stack needed."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from credflow_assets.cli import main
from credflow_assets.common.command_context import JobRun
from credflow_assets.flows import FLOW_NAMES, all_flows, flow_commands

CREDFLOW = Path(sys.executable).with_name("credflow")
ROOT_COMMANDS = {"config", "local", "sync", "logs", "reparse", "dev", "lineage", "status",
                 "instance"}
FLOW_COMMANDS = {"mpf": "therapists", "feeds": "drive_feeds", "tables": "staged_tables"}


def test_help_lists_the_root_commands_and_every_flow_command():
    shown = subprocess.run([str(CREDFLOW), "--help"], capture_output=True, text=True,
                           check=True, env=os.environ).stdout
    listed = {line.split()[0] for line in shown.split("Commands:\n", 1)[1].splitlines()
              if line.strip()}
    assert listed == ROOT_COMMANDS | set(FLOW_COMMANDS)


def test_help_imports_neither_dagster_nor_a_flow_beyond_its_commands():
    """`credflow --help` (and shell completion) must not pay Dagster's import, about a second."""
    probe = ("import sys\nfrom click.testing import CliRunner\n"
             "from credflow_assets.cli import main\nassert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
             "print(sorted(name for name in sys.modules if name == 'dagster' or "
             "name.startswith('credflow_assets.') and name.count('.') == 2 and "
             "name.split('.')[1] in " + repr(FLOW_NAMES) + "))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, env=os.environ).stdout.strip()
    assert loaded == repr(sorted(f"credflow_assets.{flow}.commands"
                                 for flow in set(FLOW_COMMANDS.values())))


def test_each_flow_command_is_its_flows_own():
    registered = {command.name: command for command in flow_commands()}
    assert set(registered) == set(FLOW_COMMANDS)
    for name, flow in FLOW_COMMANDS.items():
        assert registered[name].callback.__module__ == f"credflow_assets.{flow}.commands"
        assert main.commands[name] is registered[name]
    assert set(main.commands) == ROOT_COMMANDS | set(FLOW_COMMANDS)


def test_the_registry_names_each_flow_by_its_package():
    assert tuple(flow.name for flow in all_flows()) == FLOW_NAMES
    reparse_flow = next(param for param in main.commands["reparse"].params
                        if param.name == "flow")
    assert tuple(reparse_flow.type.choices) == FLOW_NAMES


class FakeContext:
    """A `CommandContext` that runs no job: what a flow command sees, without a stack."""

    def __init__(self, run: JobRun | None = None):
        self.run = run
        self.jobs: list[tuple[str, dict | None]] = []
        self.adopted = 0

    def adopt_stack_environment(self) -> None:
        self.adopted += 1

    def config(self):
        raise AssertionError("not needed here")

    def resources(self, *names: str):
        raise AssertionError("not needed here")

    @contextmanager
    def instance(self, *, required: bool = True):
        if required:
            raise click.ClickException("DAGSTER_HOME is not set")
        yield None

    def run_job(self, job_name: str, run_config: dict | None = None) -> JobRun:
        self.jobs.append((job_name, run_config))
        return self.run


def test_mpf_repair_runs_the_repair_job_through_the_context_and_says_why_it_failed():
    from credflow_assets.therapists.commands import mpf
    from credflow_assets.therapists.names import REPAIR_JOB_NAME, REPAIR_OP_NAME

    context = FakeContext(JobRun(run_id="r-1", success=False, events=[],
                                 failure="Drive said no"))
    result = CliRunner().invoke(mpf, ["repair", "--dry-run"], obj=context)
    assert result.exit_code == 1
    assert f"Error: {REPAIR_JOB_NAME} failed: Drive said no (run r-1)" in result.output
    assert context.jobs == [
        (REPAIR_JOB_NAME, {"ops": {REPAIR_OP_NAME: {"config": {"dry_run": True}}}})]
    assert context.adopted == 1


@pytest.mark.parametrize("command", [["mpf", "repair"], ["lineage", "1001"], ["status"]])
def test_commands_that_need_the_instance_say_how_to_get_one(command, tmp_path):
    env = {**os.environ, "CREDFLOW_HOME": str(tmp_path / "home")}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([str(CREDFLOW), "--config", str(Path(__file__).parent.parent
                                                        / "credflow.yaml"), *command],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == ("Error: DAGSTER_HOME is not set: start the local stack "
                                   "(`credflow local up`) or set it")
