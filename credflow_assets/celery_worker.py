"""The Celery app credflow's workers run: dagster-celery's own, except that a pool process keeps
one Dagster instance for every run it executes.

    dagster-celery worker start -A credflow_assets.celery_worker -y deploy/celery.yaml

dagster-celery's `execute_job` task opens a new `DagsterInstance` for each run and closes it at
the run's end: it reads dagster.yaml, builds the storages (which check their tables on new
connections) and connects again for the run's first query, about 45 ms of a run's ~0.3 s of
Dagster overhead on PostgreSQL (bench/RESULTS.md §7, session 12). Here a pool process opens the
instance at its first run and keeps it, with PooledPostgresStorage's kept connections, until the
process exits. Everything else is dagster-celery's: the task names, queues and routing the
`CeleryRunLauncher` sends to, the step task (`execute_plan`, for the celery executor) and the
resume task (run monitoring's). A changed dagster.yaml takes a worker restart, as changed code
already does.

After each run, the folders that deploy/'s S3 compute-log manager leaves on the worker's disk
for the run's step output (uploaded, and its files deleted) are removed, so a worker that runs
for months does not gather two empty folders a run.
"""

from __future__ import annotations

import dagster as dg
from celery.signals import worker_process_shutdown
from dagster_celery.config import TASK_EXECUTE_JOB_NAME
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_resume_job_task, create_task

from credflow_assets.common.dagster_compat import execute_celery_launched_run

app = make_app()

execute_plan = create_task(app)
resume_job = create_resume_job_task(app)

# This pool process's instance, opened by its first run (a pool process is forked from the
# worker's main process, which never opens one).
_kept_instance: list[dg.DagsterInstance] = []


def _instance() -> dg.DagsterInstance:
    if not _kept_instance:
        _kept_instance.append(dg.DagsterInstance.get())
    return _kept_instance[0]


@app.task(bind=True, name=TASK_EXECUTE_JOB_NAME, track_started=True)
def execute_job(_task, execute_job_args_packed) -> int:
    return execute_celery_launched_run(_instance(), execute_job_args_packed)


@worker_process_shutdown.connect
def _close_the_kept_instance(**_kwargs) -> None:
    while _kept_instance:
        _kept_instance.pop().dispose()
