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
    flow = _flow_of(job_name, keys)
    if flow is None:
        return {}
    try:
        return flow.runs.tags(partition_key, job_name, keys)
    except ValueError:  # not a key of this flow; the run fails on its own, and says so
        return {}


def tags_for_run(run: dg.DagsterRun, instance: dg.DagsterInstance | None = None) -> dict[str, str]:
    """The flow tags `run` lacks; with `instance`, also the file tags its partition's earlier
    runs carry (`FlowRuns.file_tags`)."""
    key = run.tags.get(PARTITION_TAG)
    wanted = flow_run_tags(run.job_name, run.asset_selection, key)
    if instance is not None:
        wanted.update(inherited_file_tags(instance, run.job_name, run.asset_selection, key,
                                          run.tags, this_run_id=run.run_id))
    return {name: value for name, value in wanted.items() if run.tags.get(name) != value}


# How far back a partition's runs are searched for its file tags: the sensor's run is the
# partition's first, and a file is rarely rerun more often than this.
_EARLIER_RUNS_SEARCHED = 50


def inherited_file_tags(instance: dg.DagsterInstance, job_name: str,
                        asset_keys: Iterable[dg.AssetKey] | None, partition_key: str | None,
                        tags: dict[str, str], *, this_run_id: str | None = None) -> dict[str, str]:
    """The file tags (who uploaded the file) a new run of `partition_key` lacks, as the
    partition's latest earlier run that has each one carries it."""
    import dagster as dg

    flow = _flow_of(job_name, list(asset_keys or ()))
    missing = [name for name in (flow.runs.file_tags if flow else ()) if name not in tags]
    if not partition_key or not missing:
        return {}
    found: dict[str, str] = {}
    earlier_runs = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: partition_key}),
                                     limit=_EARLIER_RUNS_SEARCHED)
    for earlier in earlier_runs:  # newest first
        if earlier.run_id == this_run_id or not flow.runs.owns(earlier.job_name,
                                                               earlier.asset_selection or ()):
            continue
        for name in missing:
            if name in earlier.tags:
                found.setdefault(name, earlier.tags[name])
        if len(found) == len(missing):
            break
    return found


def _flow_of(job_name: str, asset_keys: list[dg.AssetKey]) -> Flow | None:
    return next((flow for flow in all_flows() if flow.runs.owns(job_name, asset_keys)), None)
