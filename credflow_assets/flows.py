"""The four flows, each as its `names.py` declares it (`common/flow.py`).

The code location's definitions, the run coordinator and the `credflow` command iterate this
list; nothing else lists the flows.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from credflow_assets.common.flow import PARTITION_TAG, Flow


def all_flows() -> list[Flow]:
    # Imported here, not at module level: the run coordinator loads this module inside the
    # webserver and daemon, which need none of a flow's heavier modules.
    from credflow_assets.drive_feeds import names as drive_feeds
    from credflow_assets.provider_feeds import names as provider_feeds
    from credflow_assets.staged_tables import names as staged_tables
    from credflow_assets.therapists import names as therapists

    return [module.FLOW for module in (therapists, drive_feeds, provider_feeds, staged_tables)]


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
