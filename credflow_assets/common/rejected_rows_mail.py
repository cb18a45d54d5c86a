"""A file that was loaded but for some of its rows: the person who put it there hears, by e-mail,
which rows were not loaded and why, and how to fix them.

The failed file's message (uploader_mail.py) has a sibling for the run that succeeded with rows
rejected (bad dates, missing required values): the UI's WARN on the schema check tells nobody.
Each flow that rejects rows says who put the file there and what its run rejected
(`RejectedRowsOf`, read from the run's own materialization metadata, which holds row numbers,
columns and rules, never a value); this module words, sends and records the message.

The same rules as a failed file's: one message per file and problem. A sent message is recorded
on its run (uploader_mail.NOTIFIED_TAG, a digest of flow, partition and the sentence naming the
rows and rules), so a rerun or reparse of the same file that rejects the same rows sends
nothing; a message the mail server did not take leaves the run tagged PENDING_TAG, and the
`uploader_mail_retries` sensor sends it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from credflow_assets.common.flow import FlowRuns
from credflow_assets.common.tick_log import TickLog
from credflow_assets.common.uploader_mail import (
    RunTeller,
    errors_url,
    failure_digest,
    send_once,
    settle_if_pending,
    told_before,
)
from credflow_assets.resources.mail import MailResource

SENSOR_NAME = "rejected_rows_mail"


@dataclass(frozen=True)
class RejectedRows:
    """Who is told about a loaded file's rejected rows, and what to tell them (no values)."""

    to: str  # the uploader's address
    file_name: str  # the file's own name: the subject's
    where: str  # where they put it, as they know it
    loaded: int  # rows that went in
    rejected: int  # rows that did not
    rules: tuple[str, ...]  # one a rule broken: "date_of_birth: not a date … (rows 3, 7)"
    fix: str  # what to do, in words they can act on

    @property
    def sentence(self) -> str:
        """What the run rejected: the message's identity (its digest), and its body's core."""
        return f"{rows(self.rejected)} not loaded: " + "; ".join(self.rules)


# How a flow finds the notice for one succeeded run: (instance, run) → the notice, or None when
# no row was rejected or nobody is to be told.
RejectedRowsOf = Callable[[dg.DagsterInstance, dg.DagsterRun], "RejectedRows | None"]


def rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def row_numbers(numbers: list[int], count: int) -> str:
    """`(rows 3, 7)`; when the run's metadata lists only some of them, says how many more."""
    if not numbers:
        return f"({rows(count)}; the error report lists them)"
    listed = ", ".join(str(number) for number in numbers)
    label = "row" if len(numbers) == 1 else "rows"
    more = count - len(numbers)
    return f"({label} {listed})" if more <= 0 else \
        f"({label} {listed} and {more} more; the error report lists them all)"


def rows_message(notice: RejectedRows, report_url: str | None, run_id: str) -> tuple[str, str]:
    """(subject, body): the counts, the rules broken by column and row, never a value."""
    verb = "was" if notice.rejected == 1 else "were"
    lines = [
        "Hello,", "",
        f"credflow loaded {notice.file_name}, except for {rows(notice.rejected)}.", "",
        f"File: {notice.where}",
        f"Loaded: {rows(notice.loaded)}. Not loaded: {rows(notice.rejected)}.",
        "Why (column: rule broken, and the rows as the sheet numbers them):",
        *(f"- {rule}" for rule in notice.rules),
        f"How to fix it: {notice.fix}; credflow picks it up by itself.",
    ]
    if report_url:
        lines.append(f"Error report (each problem, by row and column): {report_url}")
    lines += ["", "You get this message once for this file and these rows.",
              f"(credflow run {run_id})"]
    subject = f"credflow: {rows(notice.rejected)} of {notice.file_name} {verb} not loaded"
    return subject, "\n".join(lines) + "\n"


def tell_rejected_rows(instance: dg.DagsterInstance, run: dg.DagsterRun, flow: str,
                       rows_of: RejectedRowsOf, mail: MailResource, log: Any) -> bool | None:
    """Send the run's uploader its one message about the rows it did not load. None: nothing
    to send (no rejected row, nobody to tell, told before); else whether the mail server took
    it (False leaves it pending)."""
    run = instance.get_run_by_id(run.run_id) or run
    notice = rows_of(instance, run)
    digest = failure_digest(flow, run, notice.sentence) if notice else ""
    if notice is None or told_before(instance, digest):
        settle_if_pending(instance, run, flow)
        return None
    subject, body = rows_message(notice, errors_url(instance, run.run_id), run.run_id)
    return send_once(instance, run, flow, digest, (notice.to, subject, body), mail, log)


def rows_teller(flow: str, rows_of: RejectedRowsOf) -> RunTeller:
    """The retry sensor's way to send a pending message of this kind again."""
    return lambda instance, run, mail, log: tell_rejected_rows(instance, run, flow, rows_of,
                                                               mail, log)


@dataclass(frozen=True)
class FlowRows:
    """A flow whose succeeded runs may have rejected rows: its name, how to tell its runs, and
    how to find a run's notice."""

    name: str
    runs: FlowRuns
    rows_of: RejectedRowsOf


def build_rejected_rows_sensor(flows: list[FlowRows]) -> dg.RunStatusSensorDefinition:
    """`rejected_rows_mail`: each succeeded run of these flows that rejected rows e-mails the
    file's uploader once. Like the failure sensor, it names no `monitored_jobs`: a run the UI
    launches runs the implicit asset job, so a run's flow is found from its job or assets."""

    @dg.run_status_sensor(
        name=SENSOR_NAME, run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="E-mails the uploader of a file whose run succeeded with rows rejected: "
        "how many rows were loaded and not, the rules broken by column and row (no values), "
        "the error report's link; once per file and rejected rows.")
    def rejected_rows_mail(context: dg.RunStatusSensorContext, mail: MailResource) -> None:
        run = context.dagster_run
        flow = next((flow for flow in flows
                     if flow.runs.owns(run.job_name, list(run.asset_selection or ()))), None)
        if flow is not None:
            tell_rejected_rows(context.instance, run, flow.name, flow.rows_of, mail,
                               TickLog(context))

    return rejected_rows_mail
