"""Failure notifications: a Slack-compatible webhook, or the log when none is configured; and,
for a flow that says who put the file there, one e-mail to that person (uploader_mail.py).

The source system's alarm said that *a* lambda failed, not which feed or file. Every message
here names the flow, the partition (the file) and the cause.
"""


import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import dagster as dg

from credflow_assets.common.messages import error_message
from credflow_assets.common.flow import FlowRuns
from credflow_assets.common.tick_log import TickLog
from credflow_assets.common.uploader_mail import UploaderOf, tell_uploader
from credflow_assets.resources.mail import MailResource

logger = logging.getLogger("credflow.notifications")

WEBHOOK_TIMEOUT_SECONDS = 10


class Notifier(dg.ConfigurableResource):
    """Posts `{"text": …}` to `webhook_url` (Slack's incoming-webhook shape); logs otherwise."""

    webhook_url: Optional[str] = None

    def notify(self, title: str, lines: list[str]) -> bool:
        """Send one message; returns whether it was delivered. Never raises: a broken webhook
        must not turn a reported failure into a second one."""
        text = "\n".join([f"*{title}*", *lines])
        if not self.webhook_url:
            logger.warning(text)
            return True
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps({"text": text}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                response.read()
            return True
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            # The URL may embed a token: name only the failure, never the address.
            logger.error(f"notification not delivered ({type(error).__name__}): {text}")
            return False


def failure_lines(run: dg.DagsterRun, reason: str) -> list[str]:
    partition = run.tags.get("dagster/partition", "(no partition)")
    return [f"job: {run.job_name}", f"partition: {partition}", f"cause: {reason}",
            f"run: {run.run_id}"]


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The failed step's own message (the cause at the bottom of Dagster's error chain)."""
    for event in context.get_step_failure_events():
        if event.step_failure_data.error is not None:
            return error_message(event.step_failure_data.error)
    return context.failure_event.message or "run failed"


FAILURE_SENSOR_NAME = "failure_notifications"


@dataclass(frozen=True)
class FlowFailures:
    """How one flow's failed runs are told: its label, how to tell its runs (its jobs and
    assets, `common.flow.FlowRuns`), optionally its own message (title and lines), and who put
    a failed run's file there (`uploader`: that person is e-mailed, uploader_mail.py)."""

    label: str
    runs: FlowRuns
    describe: Callable[[dg.RunFailureSensorContext], tuple[str, list[str]]] | None = None
    name: str = ""  # the flow's name (`Flow.name`): what its sent e-mails are recorded under
    uploader: UploaderOf | None = None


def build_failure_notification_sensor(flows: list[FlowFailures]) -> dg.RunStatusSensorDefinition:
    """One run-failure sensor for the code location: each failed run goes to the notifier with
    its flow's message, whatever launched it (a sensor, `credflow sync`, the UI, a backfill or
    a re-execution).

    It names no `monitored_jobs`: a run the UI launches runs Dagster's implicit asset job, which
    no flow names, so the run's flow is found from its job or its assets. One sensor, not one a
    flow: each sensor that sees a run leaves an "acted on" event in the run's log.
    """

    def notify(context: dg.RunFailureSensorContext, notifier: Notifier,
               mail: MailResource | None) -> None:
        run = context.dagster_run
        flow = next((flow for flow in flows
                     if flow.runs.owns(run.job_name, list(run.asset_selection or ()))), None)
        if flow is not None and flow.describe is not None:
            title, lines = flow.describe(context)
        else:
            title = f"credflow: {flow.label if flow else run.job_name} failed"
            lines = failure_lines(run, failure_reason(context))
        notifier.notify(title, lines)
        if mail is not None and flow is not None and flow.uploader is not None:
            tell_uploader(context.instance, run, flow.name or flow.label, flow.uploader, mail,
                          TickLog(context))

    # The mail resource only when some flow e-mails an uploader: definitions of one flow
    # without uploaders (tests) need not carry it.
    if any(flow.uploader for flow in flows):
        def failure_notifications(context: dg.RunFailureSensorContext, notifier: Notifier,
                                  mail: MailResource) -> None:
            notify(context, notifier, mail)
    else:
        def failure_notifications(context: dg.RunFailureSensorContext,
                                  notifier: Notifier) -> None:
            notify(context, notifier, None)

    return dg.run_failure_sensor(
        name=FAILURE_SENSOR_NAME, default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends every failed run to the notifier (the webhook in "
        "`notifications.webhook_url`, else the log): the flow, the file and the cause, "
        "whatever launched the run (a sensor, credflow sync, the UI, a backfill); and e-mails "
        "the file's uploader once per file and failure (not for a run Dagster will retry).",
    )(failure_notifications)
