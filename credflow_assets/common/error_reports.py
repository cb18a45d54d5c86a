"""A parsed file's problems, one line each (row, column, rule, value), in S3 beside its parse log.

    with error_report(flow="staged_tables", partition=key, run_id=run_id,
                      s3_client=client, bucket=logs_bucket) as errors:
        errors.add(row=3, column="date_of_birth", rule="a YYYY-MM-DD date", value="31/02/1980")
    ... metadata={**errors.metadata()}   # {"errors_uri": "s3://…", "errors_url": "http…"}

Why a file of its own: the values that break a rule are personal data (names, dates of birth).
They must not reach Dagster's event log (check, materialization and run metadata, which the UI
shows to everyone), the parse log or a notification: those keep row numbers, columns and rules
only. The person fixing the file needs the values, so they are written here, in the logs bucket
(`parsing_logs/{flow}/{partition}/{run_id}.errors.csv`, beside the run's parse log), linked from
the metadata; `credflow logs --errors PARTITION` prints the latest.

Lines are streamed to a temporary file, so a file with a million bad rows costs disk, not
memory. Nothing is stored when there is no problem. The report is stored when the block ends,
also when it raises; if the upload fails, the run still reports its own outcome and the
metadata says `not stored: …`.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from credflow_assets.common.messages import exception_message
from credflow_assets.common.parse_logs import LOG_PREFIX, list_logs
from credflow_assets.resources.s3 import object_url

ERRORS_SUFFIX = ".errors.csv"
COLUMNS = ("row", "column", "rule", "value")

logger = logging.getLogger("credflow.error_reports")


def errors_key(flow: str, partition: str, run_id: str) -> str:
    """Beside the run's parse log (`parse_logs.log_key`), which it complements."""
    return f"{LOG_PREFIX}/{flow}/{partition}/{run_id}{ERRORS_SUFFIX}"


class ErrorReport:
    def __init__(self, flow: str, partition: str, run_id: str, path: Path) -> None:
        self.flow = flow
        self.partition = partition
        self.run_id = run_id
        self.problems = 0
        self.uri: str | None = None
        self.url: str | None = None
        self.not_stored_reason: str | None = None
        self._path = path
        self._file = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    @property
    def key(self) -> str:
        return errors_key(self.flow, self.partition, self.run_id)

    def add(self, row: int | None, column: str, rule: str, value: object = None) -> None:
        """One problem: the row (None for the header or a whole column), the column, the rule
        it breaks, and the value that breaks it (None when there is none, e.g. a missing
        column)."""
        self._writer.writerow(["" if row is None else row, column, rule,
                               "" if value is None else value])
        self.problems += 1

    def metadata(self) -> dict[str, dg.MetadataValue]:
        """`errors_uri` (the s3:// address, for tools) and `errors_url` (the link a person
        opens); nothing when the file had no problem."""
        if self.uri:
            return {"errors_uri": dg.MetadataValue.path(self.uri),
                    "errors_url": dg.MetadataValue.url(self.url)}
        if self.not_stored_reason:
            return {"errors_uri": dg.MetadataValue.text(f"not stored: {self.not_stored_reason}")}
        return {}

    def _close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _store(self, s3_client, bucket: str) -> None:
        if not self.problems:
            return
        try:
            s3_client.upload_file(str(self._path), bucket, self.key, ExtraArgs={
                "ContentType": "text/csv; charset=utf-8",
                # As a parse log's: what `list_logs` sorts by.
                "Metadata": {"finished-at": datetime.now(UTC).isoformat(timespec="microseconds"),
                             "partition": self.partition.encode("ascii", "backslashreplace")
                             .decode()},
            })
            self.uri = f"s3://{bucket}/{self.key}"
            self.url = object_url(s3_client, bucket, self.key)
        except Exception as error:  # noqa: BLE001 - the parse's own outcome must still be told
            self.not_stored_reason = exception_message(error)
            logger.warning("the error report of %s was not stored: %s", self.partition,
                           self.not_stored_reason)


@contextmanager
def error_report(*, flow: str, partition: str, run_id: str, s3_client,
                 bucket: str) -> Iterator[ErrorReport]:
    """Collect a file's problems for the block; store them in `bucket` when it ends."""
    with tempfile.TemporaryDirectory(prefix="credflow-errors-") as directory:
        report = ErrorReport(flow, partition, run_id, Path(directory) / "errors.csv")
        try:
            yield report
        finally:
            report._close()
            report._store(s3_client, bucket)


def list_error_reports(s3_client, bucket: str, partition: str,
                       flow: str | None = None) -> list[dict]:
    """Stored error reports of a partition, oldest first: {key, flow, run_id, finished_at}."""
    return list_logs(s3_client, bucket, partition, flow=flow, suffix=ERRORS_SUFFIX)


def read_error_report(s3_client, bucket: str, key: str) -> str:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
