"""The four flows, each as its `names.py` declares it (`common/flow.py`), with the commands its
`commands.py` adds to `credflow`.

The code location's definitions, the run coordinator and the `credflow` command iterate this
list; nothing else lists the flows.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import TYPE_CHECKING

from credflow_assets.common.flow import PARTITION_TAG, Flow

if TYPE_CHECKING:
    import click
    import dagster as dg

# Each flow's package under credflow_assets/, and its name (`Flow.name`, `credflow reparse
# --flow`). This module imports no flow at import: the run coordinator loads it inside the
# webserver and daemon, which need none of a flow's heavier modules, and `credflow --help`
# reads the names without the Dagster import a flow's names.py costs (a second).
FLOW_NAMES = ("therapists", "drive_feeds", "provider_feeds", "staged_tables")


def all_flows() -> list[Flow]:
    return [importlib.import_module(f"credflow_assets.{name}.names").FLOW
            for name in FLOW_NAMES]


def flow_commands() -> list[click.Command]:
    """Every flow's commands for `credflow`: the `COMMANDS` of its `commands.py`, when it has
    one. Only those modules are imported (they import click; the rest waits until a command
    runs), so `credflow --help` stays fast."""
    commands = []
    for name in FLOW_NAMES:
        module = f"credflow_assets.{name}.commands"
        if importlib.util.find_spec(module) is not None:
            commands.extend(importlib.import_module(module).COMMANDS)
    return commands


def flow_named(name: str) -> Flow | None:
    return next((flow for flow in all_flows() if flow.name == name), None)


def flow_run_tags(job_name: str, asset_keys: Iterable[dg.AssetKey] | None,
                  partition_key: str | None) -> dict[str, str]:
    """The tags a run of `job_name` over `asset_keys` for `partition_key` must carry."""
    if not partition_key:
        return {}
    keys = list(asset_keys or ())
    for flow in all_flows():
        if flow.runs.owns(job_name, keys):
            try:
                return flow.runs.tags(partition_key, job_name, keys)
            except ValueError:  # not a key of this flow; the run fails on its own, and says so
                return {}
    return {}


def tags_for_run(run: dg.DagsterRun) -> dict[str, str]:
    """The flow tags `run` lacks."""
    wanted = flow_run_tags(run.job_name, run.asset_selection, run.tags.get(PARTITION_TAG))
    return {key: value for key, value in wanted.items() if run.tags.get(key) != value}
