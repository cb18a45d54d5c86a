"""A log per parse of a file, redacted, gzip-compressed, stored in S3 beside the data (doc 004).

    with parse_log(context, flow="drive_feeds", s3_client=client, bucket=logs_bucket) as log:
        log.redact_values([row.first_name, row.last_name])   # personal values the file holds
        logger.info("validated %d rows", n)                    # any logger under "credflow"
        context.log.info("upserted")                           # and the asset's own log
    ... metadata={**log.metadata()}                            # {"log_uri": "s3://…"}

What is captured: records at INFO and above from Python loggers under `credflow` and from the
asset's `context.log`, but only those emitted inside this `with` block in this thread or task.
The scope is a context variable, not global logger state, so two partitions parsed at once in
one process never share a log.

The log is uploaded when the block ends, also (above all) when it raises: the exception then
carries the log's address in its metadata (a `dg.Failure` is re-raised with `log_uri` added).
If the upload itself fails, the run still reports its own outcome and says the log was not
stored.
"""

from __future__ import annotations

import contextvars
import gzip
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from credflow_assets.common.messages import exception_message
from credflow_assets.resources.s3 import object_url

LOG_PREFIX = "parsing_logs"
CAPTURED_LOGGER = "credflow"

_active_log: contextvars.ContextVar[ParseLog | None] = contextvars.ContextVar(
    "credflow_active_parse_log", default=None
)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d ()-]{7,}\d(?![\w-])")
_DATE = re.compile(
    r"\b(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|(?:19|20)\d{6})\b"
)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Shorter tokens ("Al", "CT") are too common to redact everywhere; longer ones are personal.
_MIN_REDACTED_TOKEN = 3
# Names a log must keep (see `Redactor`): URIs, and words holding a `/` and a letter (S3 keys,
# paths). Quotes, brackets and separators end them: `'staging/claims/x.csv',` keeps the key.
_NAME_CHAR = r"[^\s'\"<>()\[\],;]"
_URI = re.compile(rf"\b[a-z][a-z0-9+.-]*://{_NAME_CHAR}+")
_KEY_LIKE = re.compile(
    rf"{_NAME_CHAR}*(?:[A-Za-z]{_NAME_CHAR}*/|/{_NAME_CHAR}*[A-Za-z]){_NAME_CHAR}*")


class Redactor:
    """Removes e-mails, phone numbers, dates and every registered personal value from free text.

    Names of things are not free text: the log's own file (its key and name, `keep_as_is`),
    any URI (`s3://…`, `http://…`) and any S3 key (a word with a `/` and a letter, such as
    `prod/claims/ingest_date=2024-01-31/2024-01-31_claims.csv`) stay as they are, so a log
    always names its file and what it wrote. A date of birth is free text (`1984-07-09`,
    `09/07/1984`: no letter), and is redacted.
    """

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._kept: set[str] = set()
        self._kept_pattern: re.Pattern | None = None

    def add(self, values: Iterable[object]) -> None:
        for value in values:
            if value is None:
                continue
            for token in _TOKEN.findall(str(value)):
                if len(token) >= _MIN_REDACTED_TOKEN:
                    self._tokens.add(token.casefold())

    def keep_as_is(self, values: Iterable[object]) -> None:
        """Names never altered wherever they appear (the file's key, URI and name)."""
        self._kept |= {str(value) for value in values if value}
        self._kept_pattern = None

    def __call__(self, text: str) -> str:
        # Names alternate with free text; only the free text is redacted.
        parts, end = [], 0
        for match in self._names().finditer(text):
            parts += [self._redact(text[end:match.start()]), match.group(0)]
            end = match.end()
        parts.append(self._redact(text[end:]))
        return "".join(parts)

    def _names(self) -> re.Pattern:
        if self._kept_pattern is None:
            # Longest first: a file's URI wins over its key, its key over its name.
            kept = "|".join(re.escape(value) for value in sorted(self._kept, key=len, reverse=True))
            self._kept_pattern = re.compile(
                (f"{kept}|" if kept else "") + f"{_URI.pattern}|{_KEY_LIKE.pattern}")
        return self._kept_pattern

    def _redact(self, text: str) -> str:
        text = _EMAIL.sub("[email]", text)
        text = _DATE.sub("[date]", text)
        text = _PHONE.sub("[phone]", text)
        if not self._tokens:
            return text
        return _TOKEN.sub(
            lambda match: "[redacted]" if match.group(0).casefold() in self._tokens
            else match.group(0),
            text,
        )


_FORMATTER = logging.Formatter()


def _log_line(record: logging.LogRecord, message: str) -> str:
    """One line of a parse log: time, level, logger, the (already redacted) message."""
    return f"{_FORMATTER.formatTime(record)} {record.levelname} {record.name}: {message}"


class _ScopedHandler(logging.Handler):
    """Writes a record to its parse log only when emitted inside that log's scope."""

    def __init__(self, parse_log: ParseLog) -> None:
        super().__init__(level=logging.INFO)
        self.parse_log = parse_log

    def filter(self, record: logging.LogRecord) -> bool:
        return _active_log.get() is self.parse_log and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Redact the message with its arguments and any traceback; the timestamp stays.
            message = logged_message(record)
            if record.exc_info:
                message += "\n" + _FORMATTER.formatException(record.exc_info)
            self.parse_log._write(_log_line(record, self.parse_log.redactor(message)))
        except Exception:  # noqa: BLE001 - a log line must never break a parse
            self.handleError(record)


def logged_message(record: logging.LogRecord) -> str:
    """What the code logged. `context.log` records carry Dagster's `job - run_id - step - `
    prefix; the log's own key already names the flow, file and run, and a prefix that differs
    on every line of every run would make two identical parses differ everywhere."""
    dagster_meta = getattr(record, "dagster_meta", None)
    if isinstance(dagster_meta, dict) and dagster_meta.get("orig_message") is not None:
        return str(dagster_meta["orig_message"])
    return record.getMessage()


class ParseLog:
    def __init__(self, flow: str, partition: str, run_id: str, directory: Path) -> None:
        self.flow = flow
        self.partition = partition
        self.run_id = run_id
        self.redactor = Redactor()
        # A log always names its file: the partition key, and the file name it ends with.
        self.redactor.keep_as_is([partition, *_file_name_of(partition)])
        self.uri: str | None = None
        self.url: str | None = None
        self.not_stored_reason: str | None = None
        self.lines = 0
        self._path = directory / "parse.log.gz"
        self._file = gzip.open(self._path, "wt", encoding="utf-8")

    @property
    def key(self) -> str:
        return log_key(self.flow, self.partition, self.run_id)

    def redact_values(self, values: Iterable[object]) -> None:
        """Register personal values read from the file (names, ids, …) for redaction."""
        self.redactor.add(values)

    def keep_as_is(self, names: Iterable[object]) -> None:
        """Register the file's own names (its key, URI and name) that redaction must not alter,
        when they differ from the partition key."""
        self.redactor.keep_as_is(names)

    def note(self, message: str, logger_name: str = CAPTURED_LOGGER) -> None:
        """An INFO line in this parse's log only, redacted like every other line. A line that
        `context.log` or a `credflow` logger emits is also one more event Dagster stores (a
        write to the instance's storage, about 1/20 of a short run's own cost): this is for
        progress lines worth keeping with the parse but not in the run's event log."""
        record = logging.makeLogRecord({"name": logger_name, "levelno": logging.INFO,
                                        "levelname": "INFO", "msg": message})
        self._write(_log_line(record, self.redactor(message)))

    def metadata(self) -> dict[str, dg.MetadataValue]:
        if self.uri:
            # The s3:// address for tools, and a link a person opens (local object or console).
            return {"log_uri": dg.MetadataValue.path(self.uri),
                    "log_url": dg.MetadataValue.url(self.url)}
        return {"log_uri": dg.MetadataValue.text(f"not stored: {self.not_stored_reason}")}

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self.lines += 1

    def _close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _file_name_of(partition: str) -> list[str]:
    """The file name a partition key ends with (`…/2024-01-31_claims.csv`), if it names one."""
    name = partition.rsplit("/", 1)[-1]
    return [name] if name != partition and re.search(r"\.\w{1,5}$", name) else []


LOG_SUFFIX = ".log.gz"


def log_key(flow: str, partition: str, run_id: str) -> str:
    return f"{LOG_PREFIX}/{flow}/{partition}/{run_id}{LOG_SUFFIX}"


@contextmanager
def parse_log(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    *,
    flow: str,
    s3_client,
    bucket: str,
    partition: str | None = None,
    run_id: str | None = None,
) -> Iterator[ParseLog]:
    """Capture the parse's log for the block; `partition` and `run_id` default to the context's."""
    partition = partition or context.partition_key
    run_id = run_id or context.run.run_id
    with tempfile.TemporaryDirectory(prefix="credflow-parse-log-") as directory:
        log = ParseLog(flow, partition, run_id, Path(directory))
        handler = _ScopedHandler(log)
        credflow_logger = logging.getLogger(CAPTURED_LOGGER)
        if not credflow_logger.isEnabledFor(logging.INFO):
            # Left at Python's default (WARNING), INFO records would be dropped before any
            # handler sees them; what else receives them is decided by those handlers' levels.
            credflow_logger.setLevel(logging.INFO)
        captured = [credflow_logger, context.log]
        for logger in captured:
            logger.addHandler(handler)
        token = _active_log.set(log)
        failure: BaseException | None = None
        try:
            yield log
        except BaseException as error:
            failure = error
            logging.getLogger(f"{CAPTURED_LOGGER}.parse").error(
                "parse failed: %s: %s", type(error).__name__, error
            )
        finally:
            _active_log.reset(token)
            for logger in captured:
                logger.removeHandler(handler)
            log._close()
            _upload(context, log, s3_client, bucket)
        if failure is not None:
            raise _with_log_uri(failure, log) from failure


def _upload(context, log: ParseLog, s3_client, bucket: str) -> None:
    try:
        finished_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        s3_client.upload_file(str(log._path), bucket, log.key, ExtraArgs={
            "ContentType": "text/plain", "ContentEncoding": "gzip",
            # S3's LastModified has whole seconds: two parses in one second need this to sort.
            "Metadata": {"finished-at": finished_at, "partition": _ascii(log.partition)},
        })
        log.uri = f"s3://{bucket}/{log.key}"
        log.url = object_url(s3_client, bucket, log.key)
    except Exception as error:  # noqa: BLE001 - the parse's own outcome must still be reported
        log.not_stored_reason = exception_message(error)
        context.log.warning(f"the parse log of {log.partition} was not stored: "
                            f"{log.not_stored_reason}")


def _with_log_uri(error: BaseException, log: ParseLog) -> BaseException:
    if not isinstance(error, Exception) or isinstance(error, dg.RetryRequested):
        return error
    if isinstance(error, dg.Failure):
        return dg.Failure(
            description=error.description,
            metadata={**(error.metadata or {}), **log.metadata()},
            allow_retries=error.allow_retries,
        )
    return dg.Failure(
        description=f"{type(error).__name__}: {error}",
        metadata=log.metadata(),
    )


def _ascii(text: str) -> str:
    # S3 user metadata must be ASCII.
    return text.encode("ascii", "backslashreplace").decode()


def read_log(s3_client, bucket: str, key: str) -> str:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return gzip.decompress(body).decode("utf-8")


def list_logs(s3_client, bucket: str, partition: str, flow: str | None = None,
              suffix: str = LOG_SUFFIX) -> list[dict]:
    """Stored logs of a partition, oldest first: {key, flow, run_id, finished_at}.

    `suffix` lists the other files kept per parse beside the log (`error_reports`)."""
    from credflow_assets.resources.s3 import iter_objects

    flows = [flow] if flow else _flows(s3_client, bucket)
    found = []
    for name in flows:
        prefix = f"{LOG_PREFIX}/{name}/{partition}/"
        for item in iter_objects(s3_client, bucket, prefix=prefix):
            rest = item["Key"][len(prefix):]
            if "/" in rest or not rest.endswith(suffix):
                continue  # a longer partition key sharing this prefix, or another kind of file
            head = s3_client.head_object(Bucket=bucket, Key=item["Key"])
            found.append({"key": item["Key"], "flow": name,
                          "run_id": rest.removesuffix(suffix),
                          "finished_at": head.get("Metadata", {}).get(
                              "finished-at", item["LastModified"].isoformat())})
    return sorted(found, key=lambda entry: entry["finished_at"])


def _flows(s3_client, bucket: str) -> list[str]:
    page = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{LOG_PREFIX}/", Delimiter="/")
    return [p["Prefix"][len(LOG_PREFIX) + 1:].rstrip("/") for p in page.get("CommonPrefixes", [])]


# What differs between two runs of the same parse, however alike: masked before diffing.
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:[,.]\d+)? ")
_RUN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
# `dagster: staged_claims_job - <run id> - s3__staging__claims_staged_csv - `, as logs written
# before `logged_message` began each `context.log` line (their run id already masked).
_DAGSTER_PREFIX = re.compile(r"^(\w+ dagster: )\S+ - <run id> - (?:\S+ - )?")
_DURATION = re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s|sec|seconds?|min|minutes?)\b")
_RATE = re.compile(r"\b\d[\d,]*(?:\.\d+)? ?(\w+)/s\b")


def comparable_line(line: str) -> str:
    """A log line without what changes from run to run even when the parse does not: its
    timestamp, run ids, Dagster's `job - run_id - step - ` prefix, durations and rates."""
    line = _RUN_ID.sub("<run id>", _TIMESTAMP.sub("", line))
    line = _DAGSTER_PREFIX.sub(r"\1", line)
    return _RATE.sub(r"<n> \1/s", _DURATION.sub("<duration>", line))


def diff_logs(older: str, newer: str, older_name: str, newer_name: str) -> str:
    """A unified diff of what two parses logged ("" when nothing changed): lines compared
    without their per-run parts (`comparable_line`)."""
    import difflib

    def comparable(text: str) -> list[str]:
        return [comparable_line(line) + "\n" for line in text.splitlines()]

    return "".join(difflib.unified_diff(comparable(older), comparable(newer), older_name,
                                        newer_name))


def logged_events(
    context: dg.AssetExecutionContext,
    events: Iterator,
    *,
    flow: str,
    s3_client,
    bucket: str,
) -> Iterator:
    """Run an asset body (a generator of results) inside a parse log.

    Its events are passed on after the log is stored, each `MaterializeResult` with `log_uri`
    added; when the body fails, the events it yielded first (a failed check) still reach
    Dagster, then the failure carrying `log_uri`.
    """
    collected = []
    try:
        with parse_log(context, flow=flow, s3_client=s3_client, bucket=bucket) as log:
            for event in events:
                collected.append(event)
    except BaseException:
        yield from collected
        raise
    for event in collected:
        if isinstance(event, dg.MaterializeResult):
            event = event._replace(metadata={**(event.metadata or {}), **log.metadata()})
        yield event
