"""Dagster's queued run coordinator, plus credflow's run tags on every run it is given.

Configured in `DAGSTER_HOME/dagster.yaml` (`run_coordinator:`, see `local/dagster.yaml` and
`deploy/`), so the webserver and the daemon put every run through it: sensor runs, the UI's
Materialize button, backfills and re-executions alike. Before a run joins the queue it gets
the tags of its flow (`flows.py`) and its file's uploader from the partition's earlier runs
(so a re-executed file's failure is still told to whoever uploaded it), so the tag concurrency limits hold whatever launched it:
two runs for one therapist never run at once, which is what keeps a file out of another
therapist's folder.
"""

from __future__ import annotations

import dagster as dg

from credflow_assets.flows import tags_for_run


class CredflowRunCoordinator(dg.QueuedRunCoordinator):
    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        missing = tags_for_run(run, self._instance)
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
