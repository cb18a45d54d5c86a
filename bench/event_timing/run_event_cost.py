"""A run's event writes, by database: the run's own file and the index (bench/RESULTS.md §4).

Materializes a partitioned asset with a check (planned events, a materialization, a check
evaluation, a log line, like an MPF run on a smaller scale) `--runs` times on a fresh SQLite
instance of each kind, interleaved run by run, and times every connection the event log opens
(from asking for it to its close), split by file: the run's own or the index.

    python bench/event_timing/run_event_cost.py [--runs 30]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import dagster as dg
from dagster._core.storage.event_log import SqliteEventLogStorage

# The same small partitioned asset with a check as the storage's own tests run (the tests
# package is the repository's, not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from credflow_assets_tests.test_mpf_event_log_storage import (  # noqa: E402
    LOCAL_DAGSTER_YAML as LOCAL_YAML,
    files,
    landed,
)


def timed_storage(instance, totals):
    storage = instance.event_log_storage
    for name in ("run_connection", "index_connection"):
        opened = getattr(storage, name)

        def timed(*args, _opened=opened, _name=name, **kwargs):
            @contextmanager
            def connection():
                started = time.perf_counter(), time.process_time()
                with _opened(*args, **kwargs) as conn:
                    yield conn
                totals[_name][0] += time.perf_counter() - started[0]
                totals[_name][1] += time.process_time() - started[1]
                totals[_name][2] += 1
            return connection()

        setattr(storage, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    kinds = {"dagster": None, "copied (main)": LOCAL_YAML, "held run file": LOCAL_YAML,
             "held run file + index": LOCAL_YAML}
    totals = {kind: defaultdict(lambda: [0.0, 0.0, 0]) for kind in kinds}
    events, run_ids = {}, defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="run-event-cost-") as base:
        instances = {}
        for n, (kind, yaml) in enumerate(kinds.items()):
            home = Path(base) / str(n)
            home.mkdir()
            if yaml:
                shutil.copyfile(yaml, home / "dagster.yaml")
            instances[kind] = dg.DagsterInstance.from_config(str(home))
            instances[kind].add_dynamic_partitions(files.name, [f"{i}.csv"
                                                                for i in range(args.runs)])
            storage = instances[kind].event_log_storage
            if kind == "copied (main)":  # session 9's class: Dagster's connection per use
                storage.run_connection = partial(SqliteEventLogStorage.run_connection, storage)
                storage.index_connection = partial(SqliteEventLogStorage.index_connection,
                                                   storage)
            elif kind == "held run file":
                storage.hold_index = False
            timed_storage(instances[kind], totals[kind])
        for i in range(args.runs):
            for kind, instance in instances.items():
                run_ids[kind].append(dg.materialize([landed], instance=instance,
                                                    partition_key=f"{i}.csv").run_id)
        totals = {kind: {name: list(values) for name, values in counts.items()}
                  for kind, counts in totals.items()}
        for kind, instance in instances.items():  # read after the timing (reads connect too)
            events[kind] = sum(len(instance.all_logs(run_id)) for run_id in run_ids[kind])
        for instance in instances.values():
            instance.dispose()
    print(f"{args.runs} runs a kind, interleaved; load {os.getloadavg()[0]:.1f}")
    print(f"{'':32}{'events':>8}{'file':>7}{'connections':>13}{'wall ms':>9}{'cpu ms':>8}"
          f"{'ms a run':>9}")
    for kind in kinds:
        for name, label in (("run_connection", "run"), ("index_connection", "index")):
            wall, cpu, count = totals[kind][name]
            print(f"{kind:32}{events[kind]:>8}{label:>7}{count:>13}{wall / count * 1e3:>9.2f}"
                  f"{cpu / count * 1e3:>8.2f}{wall / args.runs * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
