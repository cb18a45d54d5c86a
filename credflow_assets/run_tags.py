"""credflow's run tags, whatever launched the run.

The concurrency limits in `dagster.yaml` (one run per therapist, per feed, per staged table at
a time) and the failure notifications key on these tags. A flow's sensors put them on the runs
they request, but a run launched from the UI's Materialize button, a backfill or a
re-execution runs Dagster's implicit asset job with only a `dagster/partition` tag. Every tag
here follows from the run's partition key once its flow is known (by its job or its assets),
so the run coordinator (`run_coordinator.py`) adds them to every run it is given, and
`credflow sync` and in-process reparses to the runs they execute themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg

PARTITION_TAG = "dagster/partition"


@dataclass(frozen=True)
class FlowRuns:
    """How to tell a flow's runs, and the tags a run carries: `tags(partition key, job name,
    asset keys)`; it raises ValueError for a key the flow cannot have made."""

    job_names: Callable[[str], bool]
    asset_key_prefixes: tuple[tuple[str, ...], ...]
    tags: Callable[[str, str, list[dg.AssetKey]], dict[str, str]]

    def owns(self, job_name: str, asset_keys: Iterable[dg.AssetKey]) -> bool:
        return self.job_names(job_name) or any(
            tuple(key.path[:len(prefix)]) == prefix
            for key in asset_keys for prefix in self.asset_key_prefixes)


def _flows() -> list[FlowRuns]:
    from credflow_assets.drive_feeds import settings as drive_feeds
    from credflow_assets.provider_feeds import naming as provider_feeds
    from credflow_assets.staged_tables import settings as staged_tables
    from credflow_assets.therapists import names as therapists

    return [module.FLOW_RUNS for module in (therapists, drive_feeds, provider_feeds, staged_tables)]


def flow_run_tags(job_name: str, asset_keys: Iterable[dg.AssetKey] | None,
                  partition_key: str | None) -> dict[str, str]:
    """The tags a run of `job_name` over `asset_keys` for `partition_key` must carry."""
    if not partition_key:
        return {}
    keys = list(asset_keys or ())
    for flow in _flows():
        if flow.owns(job_name, keys):
            try:
                return flow.tags(partition_key, job_name, keys)
            except ValueError:  # not a key of this flow; the run fails on its own, and says so
                return {}
    return {}


def tags_for_run(run: dg.DagsterRun) -> dict[str, str]:
    """The flow tags `run` lacks."""
    wanted = flow_run_tags(run.job_name, run.asset_selection, run.tags.get(PARTITION_TAG))
    return {key: value for key, value in wanted.items() if run.tags.get(key) != value}
