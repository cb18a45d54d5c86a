"""What a flow declares about itself in its `names.py`, so that what runs every flow (the run
coordinator, the failure notifications, `credflow sync` and `credflow reparse`) reads it there
instead of writing a flow's names again.

Run tags, whatever launched the run. The concurrency limits in `dagster.yaml` (one run per
therapist, per feed, per staged table at a time) and the failure notifications key on them. A
flow's sensors put them on the runs they request, but a run launched from the UI's Materialize
button, a backfill or a re-execution runs Dagster's implicit asset job with only a
`dagster/partition` tag. Every tag follows from the run's partition key once its flow is known
(by its job or its assets), so the run coordinator (`credflow_assets/run_coordinator.py`) adds
them to every run it is given, and `credflow sync` and in-process reparses to the runs they
execute themselves (`credflow_assets/flows.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `credflow --help` reads the registry without Dagster
    import dagster as dg

PARTITION_TAG = "dagster/partition"
# On every run of a `credflow reparse` (its id): a rerun the user asked for by hand.
REPARSE_TAG = "credflow/reparse_id"


@dataclass(frozen=True)
class FlowRuns:
    """How to tell a flow's runs, and the tags a run carries: `tags(partition key, job name,
    asset keys)`; it raises ValueError for a key the flow cannot have made."""

    job_names: Callable[[str], bool]
    asset_key_prefixes: tuple[tuple[str, ...], ...]
    tags: Callable[[str, str, list[dg.AssetKey]], dict[str, str]]
    # Tags about the file itself (who uploaded it), which only the sensor that found the file
    # can read. A later run of the same partition (a reparse, the UI's re-execution or
    # Materialize) inherits them from the partition's earlier runs, so its failure is still
    # told to the person who uploaded the file.
    file_tags: tuple[str, ...] = ()

    def owns(self, job_name: str, asset_keys: Iterable[dg.AssetKey]) -> bool:
        return self.job_names(job_name) or any(
            tuple(key.path[:len(prefix)]) == prefix
            for key in asset_keys for prefix in self.asset_key_prefixes)


@dataclass(frozen=True)
class FlowPartitions:
    """Where a flow's partitions live and which job reruns one, by the partition's name part
    (its feed, provider or table; "" for therapists). `credflow reparse` reads it."""

    name_option: str | None  # --feed, --provider, --table: what the name part means
    names: Callable[[object], list[str]]  # every name the config (CredflowConfig) declares
    partitions_of: Callable[[str], str]  # a name → its DynamicPartitionsDefinition's name
    asset_of: Callable[[str], dg.AssetKey]  # its materializations date a partition for --since
    name_of: Callable[[str], str]  # partition key → feed / provider / table
    job_for: Callable[[str], str]  # the name part → the job that reruns it
    # Partitions of one lane rerun one after another, in the order they were added (a feed's
    # files upsert the same rows, so the last file must win again); lanes run side by side.
    lane_of: Callable[[str], str]


@dataclass(frozen=True)
class Flow:
    """One flow's names, as the code location's shared pieces and the CLI need them."""

    name: str  # the package, and `credflow reparse`'s FLOW argument
    label: str  # how a failure notification names it: "credflow: drive feed failed"
    runs: FlowRuns
    partitions: FlowPartitions


def first_segment(partition_key: str) -> str:
    """The name part of a key that starts with it (`{feed}/…`, `{provider}/…`)."""
    return partition_key.split("/", 1)[0]
