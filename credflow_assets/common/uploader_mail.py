"""The person who put a file there hears, by e-mail, that it was not loaded, and how to fix it.

Each flow says who that person is and how they know the file (`UploaderNotice`, from its
`FlowFailures.uploader`): a staged file's uploader, a feed file's last modifier on Drive, the
success team for a therapist upload. Engineers keep the webhook for every failure
(notifications.py); this is the mail beside it.

One message per file and failure, not per retry or rerun:
- a run Dagster will retry (`dagster/will_retry`) sends nothing: its last attempt speaks;
- a sent message is recorded on its run as a tag (NOTIFIED_TAG = a digest of flow, partition,
  the file's content version when the partition outlives it, and failure sentence), and a
  message whose digest some run already carries is not sent again.
  A run tag, not a sensor cursor: it lives in the instance with the run (a cursor reset or a
  second code location does not forget it), it is one indexed tag lookup, and the run's page
  in the UI shows that the uploader was told.
- a message the mail server did not take (SMTP down) leaves the run tagged PENDING_TAG; the
  `uploader_mail_retries` sensor sends it again on its next tick, until the server takes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from credflow_assets.common.messages import error_message
from credflow_assets.common.tick_log import TickLog
from credflow_assets.resources.mail import MailResource

NOTIFIED_TAG = "credflow/uploader_notified"
PENDING_TAG = "credflow/uploader_mail_pending"  # the flow's name while pending, then DONE
DONE = "settled"
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_SENSOR_NAME = "uploader_mail_retries"
# Pending messages looked at per tick: a mail server that was down for a day leaves at most a
# day's failed files, sent a batch per minute.
MAX_RETRIES_PER_TICK = 50

SAME_FOLDER = "upload a corrected file to the same folder"
SAME_KEY = "upload a corrected file to the same key"


@dataclass(frozen=True)
class UploaderNotice:
    """Who is told about a failed file, and how they know it."""

    to: str  # an address ("Name <a@b>" is fine)
    file_name: str  # the file's own name: the subject's
    where: str  # where they put it, as they know it (Drive folder and name, the staging key)
    fix: str  # what to do, in words they can act on
    # The file's content, when its partition outlives it (a staged key uploaded again): a new
    # upload that fails the same way is a new message.
    version: str = ""


# How a flow finds the notice for one failed run: (instance, run, failure sentence) → notice,
# or None when nobody but the engineers is to be told.
UploaderOf = Callable[[dg.DagsterInstance, dg.DagsterRun, str], "UploaderNotice | None"]


def failure_sentence(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The failed step's own message, read back from the run's log (the retry sensor has no
    failure context)."""
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        error = event.step_failure_data.error if event is not None else None
        if error is not None:
            return error_message(error)
    return "the run failed"


def errors_url(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The error report's http link, from the run's failure or check metadata."""
    for event_type in (dg.DagsterEventType.STEP_FAILURE,
                       dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                       dg.DagsterEventType.ASSET_MATERIALIZATION):
        for entry in instance.all_logs(run_id, of_type=event_type):
            url = _url_in(_metadata_of(entry.dagster_event))
            if url:
                return url
    return None


def _metadata_of(event: Any) -> dict[str, Any]:
    if event is None:
        return {}
    data = event.event_specific_data
    if event.event_type == dg.DagsterEventType.STEP_FAILURE:
        user_data = getattr(data, "user_failure_data", None)
        metadata = getattr(user_data, "metadata", None) or {}
    elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
        metadata = data.materialization.metadata
    else:
        metadata = getattr(data, "metadata", None) or {}
    return {name: getattr(value, "value", value) for name, value in metadata.items()}


def _url_in(metadata: dict[str, Any]) -> str | None:
    url = metadata.get("errors_url")
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def message_of(notice: UploaderNotice, sentence: str, report_url: str | None,
               run_id: str) -> tuple[str, str]:
    """(subject, body). The sentence is the run's own failure (it names columns, rules and row
    counts, never a value); the values are in the error report the link opens."""
    lines = [
        "Hello,", "",
        f"credflow did not load {notice.file_name}.", "",
        f"File: {notice.where}",
        f"What is wrong: {sentence}",
        f"How to fix it: {notice.fix}; credflow picks it up by itself.",
    ]
    if report_url:
        lines.append(f"Error report (each problem, by row and column): {report_url}")
    lines += ["", "You get this message once for this file and this problem.",
              f"(credflow run {run_id})"]
    return f"credflow: {notice.file_name} was not loaded", "\n".join(lines) + "\n"


def failure_digest(flow: str, run: dg.DagsterRun, sentence: str, version: str = "") -> str:
    """One file and problem: its flow, partition (and content version) and the sentence that
    says the problem (the failure, or the rows not loaded: rejected_rows_mail.py)."""
    partition = run.tags.get("dagster/partition", run.run_id)
    text = f"{flow}\n{partition}\n{version}\n{sentence}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def told_before(instance: dg.DagsterInstance, digest: str) -> bool:
    return bool(instance.get_run_ids(dg.RunsFilter(tags={NOTIFIED_TAG: digest}), limit=1))


def tell_uploader(instance: dg.DagsterInstance, run: dg.DagsterRun, flow: str,
                  uploader_of: UploaderOf, mail: MailResource, log: Any) -> bool | None:
    """Send the run's uploader its one message. None: nothing to send (a retry follows, nobody
    to tell, told before); else whether the mail server took it (False leaves it pending)."""
    # The run as stored now: Dagster tags a run it will retry when it fails, after the event
    # the failure sensor was handed.
    run = instance.get_run_by_id(run.run_id) or run
    if run.tags.get(WILL_RETRY_TAG, "").lower() == "true":
        return None
    sentence = failure_sentence(instance, run)
    notice = uploader_of(instance, run, sentence)
    digest = failure_digest(flow, run, sentence, notice.version if notice else "")
    if notice is None or told_before(instance, digest):
        settle_if_pending(instance, run, flow)
        return None
    subject, body = message_of(notice, sentence, errors_url(instance, run.run_id), run.run_id)
    return send_once(instance, run, flow, digest, (notice.to, subject, body), mail, log)


def send_once(instance: dg.DagsterInstance, run: dg.DagsterRun, flow: str, digest: str,
              message: tuple[str, str, str], mail: MailResource, log: Any) -> bool:
    """Send `message` (to, subject, body) and record it on the run under `digest`. A message
    the mail server did not take leaves the run tagged PENDING_TAG, for the retry sensor."""
    to, subject, body = message
    if not mail.send(to, subject, body):
        # The mail resource logged why, in one line; the retry sensor sends it again.
        instance.add_run_tags(run.run_id, {PENDING_TAG: flow})
        log.warning(f"the uploader was not told yet ({subject!r}: the mail server did not "
                    f"take the message); {RETRY_SENSOR_NAME} sends it again")
        return False
    settled = {PENDING_TAG: DONE} if run.tags.get(PENDING_TAG) else {}
    instance.add_run_tags(run.run_id, {NOTIFIED_TAG: digest, **settled})
    return True


def settle_if_pending(instance: dg.DagsterInstance, run: dg.DagsterRun, flow: str) -> None:
    """A pending run with nothing (more) to send is settled: the retry sensor leaves it."""
    if run.tags.get(PENDING_TAG) == flow:
        instance.add_run_tags(run.run_id, {PENDING_TAG: DONE})


# How a succeeded run's pending message is sent again: (instance, run, mail, log) → as
# `tell_uploader` (a flow's rejected-rows message, rejected_rows_mail.py).
RunTeller = Callable[[dg.DagsterInstance, dg.DagsterRun, MailResource, Any], "bool | None"]


def build_uploader_mail_retry_sensor(
        uploaders: dict[str, UploaderOf],
        succeeded: dict[str, RunTeller] | None = None) -> dg.SensorDefinition:
    """`uploader_mail_retries`: messages the mail server did not take, sent again each tick.
    `uploaders`: flow name → how that flow finds a failed run's uploader; `succeeded`: flow
    name → how a succeeded run's message (rows not loaded) is told."""
    succeeded = succeeded or {}

    @dg.sensor(name=RETRY_SENSOR_NAME, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Sends again the uploader e-mails (a failed file, rows of a file "
               "not loaded) that the mail server did not take (it was down), once per file "
               "and problem.")
    def uploader_mail_retries(context: dg.SensorEvaluationContext,
                              mail: MailResource) -> dg.SkipReason:
        sent = 0
        for flow in sorted({*uploaders, *succeeded}):
            runs = context.instance.get_runs(dg.RunsFilter(tags={PENDING_TAG: flow}),
                                             limit=MAX_RETRIES_PER_TICK)
            for run in runs:
                sent += bool(_tell_again(context.instance, run, flow, uploaders.get(flow),
                                         succeeded.get(flow), mail, TickLog(context)))
        return dg.SkipReason(f"{sent} pending uploader message(s) sent")

    return uploader_mail_retries


def _tell_again(instance: dg.DagsterInstance, run: dg.DagsterRun, flow: str,
                uploader_of: UploaderOf | None, teller: RunTeller | None, mail: MailResource,
                log: Any) -> bool | None:
    """A pending run's message again: a succeeded run's is its flow's `teller`'s."""
    if run.status == dg.DagsterRunStatus.SUCCESS:
        if teller is not None:
            return teller(instance, run, mail, log)
    elif uploader_of is not None:
        return tell_uploader(instance, run, flow, uploader_of, mail, log)
    settle_if_pending(instance, run, flow)
    return None
