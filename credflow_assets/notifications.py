"""Failure notifications: a Slack-compatible webhook, or the log when none is configured.

The source system's alarm said that *a* lambda failed, not which feed or file. Every message
here names the flow, the partition (the file) and the cause.
"""


import json
import logging
import urllib.error
import urllib.request
from typing import Optional

import dagster as dg

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


def build_failure_notification_sensor(
    name: str, jobs: list, flow_label: str
) -> dg.RunStatusSensorDefinition:
    """A run-failure sensor for one flow's jobs that sends each failure to the notifier."""

    @dg.run_failure_sensor(name=name, monitored_jobs=jobs,
                           default_status=dg.DefaultSensorStatus.RUNNING)
    def _notify(context: dg.RunFailureSensorContext, notifier: Notifier) -> None:
        from credflow_assets.sync import innermost_error_message

        reason = context.failure_event.message or "run failed"
        for event in context.get_step_failure_events():
            if event.step_failure_data.error is not None:
                reason = innermost_error_message(event.step_failure_data.error)
                break
        notifier.notify(f"credflow: {flow_label} failed", failure_lines(context.dagster_run, reason))

    return _notify
