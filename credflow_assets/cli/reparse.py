"""`credflow reparse`: rerun existing partitions of a flow, every run tagged with one reparse id.

A reparse is not a special code path: each selected partition is rerun through the flow's own
job — as a backfill through the webserver when one runs (backfills.py), else in this process,
exactly as `credflow sync` runs new files. Each run writes its own parse
log, so the logs of a file's parses sit side by side (`credflow logs diff PARTITION`), and
`credflow/reparse_id` finds every run of one reparse (the Dagster UI filters runs by tag).

Many partitions. A worker loads the definitions, the instance and its AWS clients once and
reuses them for every run it is given, so a run costs Dagster's own bookkeeping and the work,
not a process start and a definitions load as a daemon-launched run does. Runs go in lanes:
partitions whose order matters share a lane and run one after another in the order they were
added (a feed's files upsert the same rows, so the last file must win again; a provider's or a
table's files can land on the same keys), and up to `workers` lanes run at once, each worker a
process of its own (`_run_pool` says why not threads).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    wait,
)
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import dagster as dg

from credflow_assets.config import CredflowConfig
from credflow_assets.common.dagster_compat import execute_run_in_process
from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.flow import REPARSE_TAG, FlowPartitions
from credflow_assets.flows import all_flows, flow_named, flow_run_tags, inherited_file_tags
from credflow_assets.cli.sync import (
    RunOutcome,
    execution_run_config,
    failure_reason,
    run_summary,
)



DEFAULT_WORKERS = 2  # processes; each holds its own loaded definitions


class ReparseError(ValueError):
    """The selection is wrong (unknown flow, name or partition); nothing was run."""


@dataclass
class ReparseReport:
    reparse_id: str
    runs: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [run for run in self.runs if not run.success]


def select_partitions(
    instance: dg.DagsterInstance,
    config: CredflowConfig,
    flow: str,
    *,
    name: str | None = None,
    since: datetime | None = None,
    partitions: list[str] | None = None,
) -> list[str]:
    """The flow's partitions to rerun, in the order they were added."""
    target = _target(flow)
    if name is not None and target.name_option is None:
        raise ReparseError(f"{flow} has no --feed/--provider/--table")
    declared = target.names(config)
    if name is not None and name not in declared:
        raise ReparseError(f"{flow}: no {target.name_option} named {name!r} in the config "
                           f"({', '.join(declared) or 'none'})")
    partition_sets = dict.fromkeys(target.partitions_of(each)
                                   for each in ([name] if name is not None else declared))
    existing = [key for partition_set in partition_sets
                for key in instance.get_dynamic_partitions(partition_set)]
    if partitions:
        archived = _archived_keys(instance, partition_sets)
        unknown = [key for key in partitions if key not in set(existing) and key not in archived]
        if unknown:
            raise ReparseError(f"{flow}: no such partition(s): {', '.join(unknown)}")
        existing += _restore(instance, partition_sets, [key for key in partitions
                                                        if key not in set(existing)])
        chosen = [key for key in existing if key in set(partitions)]
    else:
        chosen = list(existing)
    if name is not None:
        chosen = [key for key in chosen if target.name_of(key) == name]
    if since is not None:
        chosen = [key for key in chosen if _last_materialized(instance, target, key) >= since]
    return chosen


def _archived_keys(instance: dg.DagsterInstance, partition_sets) -> set[str]:
    from credflow_assets.common.partition_archive import read_archive

    return {key for partition_set in partition_sets
            for key in read_archive(instance, partition_set)}


def _restore(instance: dg.DagsterInstance, partition_sets, keys: list[str]) -> list[str]:
    """An archived file named by its key comes back: its partition is added again (and the
    archive says so), so the rerun is a partition run like any other."""
    from credflow_assets.common.partition_archive import restore_partitions

    restored: list[str] = []
    for partition_set in partition_sets:
        restored += restore_partitions(instance, partition_set,
                                       [key for key in keys if key not in restored])
    return restored


def partitions_by_job(flow: str, partitions: list[str]) -> dict[str, list[str]]:
    """The partitions grouped by the job that reruns them (one backfill per job)."""
    target = _target(flow)
    grouped: dict[str, list[str]] = {}
    for key in partitions:
        grouped.setdefault(target.job_for(target.name_of(key)), []).append(key)
    return grouped


def new_reparse_id() -> str:
    return uuid.uuid4().hex[:12]


def lanes(flow: str, partitions: list[str]) -> list[list[str]]:
    """The partitions split into lanes (order kept within each), largest lane first so the
    longest chain of runs starts at once."""
    target = _target(flow)
    grouped: dict[str, list[str]] = {}
    for key in partitions:
        grouped.setdefault(target.lane_of(key), []).append(key)
    return sorted(grouped.values(), key=len, reverse=True)


def reparse(
    config: CredflowConfig,
    instance: dg.DagsterInstance,
    flow: str,
    partitions: list[str],
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
) -> ReparseReport:
    """Rerun `partitions`, up to `workers` lanes at once (see the module docstring); the report
    lists the runs in the order of `partitions`, whatever order they finished in."""
    if workers < 1:
        raise ReparseError(f"workers must be at least 1, not {workers}")
    report = ReparseReport(reparse_id=new_reparse_id())
    waiting = [deque(lane) for lane in lanes(flow, partitions)]
    workers = max(1, min(workers, len(waiting)))
    progress(f"reparse {report.reparse_id}: {len(partitions)} partition(s) of {flow} in "
             f"{len(waiting)} lane(s), {workers} at a time")
    outcomes: dict[str, RunOutcome] = {}
    started = time.monotonic()
    with _run_pool(config, instance, workers) as submit:
        running = {submit(flow, lane.popleft(), report.reparse_id, verbose): lane
                   for lane in waiting}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                lane = running.pop(future)
                outcome = future.result()  # _rerun reports a failed run; a raise is a bug
                outcomes[outcome.partition] = outcome
                progress(_progress_line(outcome, len(outcomes), len(partitions)))
                if lane:  # the lane's next partition only after this one finished
                    running[submit(flow, lane.popleft(), report.reparse_id, verbose)] = lane
    report.runs = [outcomes[key] for key in partitions]
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def _run_pool(config: CredflowConfig, instance: dg.DagsterInstance, workers: int):
    """A `submit(flow, key, reparse_id, verbose) -> Future[RunOutcome]`.

    Several workers are processes, not threads: each Dagster run reconfigures Python logging
    (`logging.config.dictConfig` for the instance's `python_logs`), which deadlocks when two
    runs start at once in one process. Each process loads the definitions once and keeps them
    for every run it is given. One worker runs here, in this process.
    """
    if workers == 1:
        from credflow_assets.definitions import build_definitions

        _worker.update(defs=build_definitions(config), instance=instance)
        yield _run_here
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding locks
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_start_worker,
                             initargs=(config, instance.get_ref())) as pool:
        yield lambda *args: pool.submit(_worker_rerun, *args)


_worker: dict[str, Any] = {}


def _start_worker(config: CredflowConfig, instance_ref) -> None:
    from credflow_assets.definitions import build_definitions

    _worker["defs"] = build_definitions(config)
    _worker["instance"] = dg.DagsterInstance.from_ref(instance_ref)


def _run_here(*args) -> Future:
    future: Future = Future()
    try:
        future.set_result(_worker_rerun(*args))
    except BaseException as error:  # surfaced by future.result(), as from a pool
        future.set_exception(error)
    return future


def _worker_rerun(flow: str, key: str, reparse_id: str, verbose: bool) -> RunOutcome:
    instance = _worker["instance"]
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return _rerun(_worker["defs"], instance, _target(flow), key, reparse_id, verbose)


def _rerun(defs: dg.Definitions, instance: dg.DagsterInstance, target: FlowPartitions, key: str,
           reparse_id: str, verbose: bool) -> RunOutcome:
    job_name = target.job_for(target.name_of(key))
    started = time.monotonic()
    tags = {**flow_run_tags(job_name, None, key), REPARSE_TAG: reparse_id}
    tags.update(inherited_file_tags(instance, job_name, None, key, tags))  # who is told
    result = execute_run_in_process(
        defs, instance, job_name, partition_key=key,
        run_config=execution_run_config(None, verbose), tags=tags,
    )
    return RunOutcome(
        sensor="", job=job_name, partition=key, run_id=result.run_id,
        success=result.success, seconds=time.monotonic() - started,
        error=None if result.success else failure_reason(result),
        summary=run_summary(result),
    )


def _progress_line(outcome: RunOutcome, done: int, total: int) -> str:
    status = (f"ok{': ' + outcome.summary if outcome.summary else ''}"
              if outcome.success else f"FAILED: {outcome.error}")
    return (f"[{done}/{total}] {outcome.partition} run {outcome.run_id[:8]} {status} "
            f"({outcome.seconds:.1f}s)")


def _target(flow: str) -> FlowPartitions:
    found = flow_named(flow)
    if found is None:
        names = ", ".join(each.name for each in all_flows())
        raise ReparseError(f"unknown flow {flow!r}; one of {names}")
    return found.partitions


def _last_materialized(instance: dg.DagsterInstance, target: FlowPartitions, key: str) -> datetime:
    record = latest_materialization(instance, target.asset_of(target.name_of(key)), key)
    if record is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(record.timestamp, tz=timezone.utc)
