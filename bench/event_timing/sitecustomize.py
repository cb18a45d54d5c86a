"""Benchmark instrumentation (bench/daemon_throughput.py): times Dagster's event writes in the
daemon's run workers and Celery's pool processes, which the benchmark cannot patch from outside.

Active only when CREDFLOW_BENCH_EVENT_TIMING names a directory, and only in processes started
with this directory on PYTHONPATH. Dagster is not imported here (that would add its import time
to every process the benchmark measures): `DagsterInstance.handle_new_event` is wrapped once
`dagster._core.instance.instance` has been imported by the process itself. Each write appends
`start end` (epoch seconds, the event log's clock) to `{dir}/{pid}.txt`.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

_DIRECTORY = os.environ.get("CREDFLOW_BENCH_EVENT_TIMING")
_MODULE = "dagster._core.instance.instance"


def _wrap(module) -> None:
    cls = module.DagsterInstance
    handle_new_event = cls.handle_new_event
    files = {}

    def timed_handle_new_event(self, *args, **kwargs):
        started = time.time()
        try:
            return handle_new_event(self, *args, **kwargs)
        finally:
            # Opened by the writing process: a Celery pool process is forked from its worker
            # after Dagster is imported, and must not write under the worker's pid.
            pid = os.getpid()
            if pid not in files:
                files[pid] = open(os.path.join(_DIRECTORY, f"{pid}.txt"), "a", buffering=1)
            files[pid].write(f"{started} {time.time()}\n")

    cls.handle_new_event = timed_handle_new_event


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


if _DIRECTORY:
    sys.meta_path.insert(0, _AfterImport())
