"""SQS, and the S3-event drain the S3 sensors share.

S3 sends an `s3:ObjectCreated:*` event for every upload under a watched prefix to the flow's SQS
queue (provisioned by `local/moto_server.ensure_s3_event_queue` locally). A sensor tick drains a
bounded batch from that queue, so a tick costs what is new, not what exists.

Delivery is **at least once**, and acknowledgement is deferred by one tick:

    cursor = S3EventCursor.from_json(context.cursor)
    batch = sqs.drain_s3_events(queue_url, acknowledge=cursor.pending_receipts,
                                max_messages=100, log=context.log)
    run_requests = [RunRequest(run_key=event.identity, ...) for event in batch.events]
    return SensorResult(run_requests=run_requests, ...,
                        cursor=cursor.advance(batch).to_json())

The tick that receives messages does not delete them: its run requests and cursor are not yet
committed when the sensor function returns, and a tick that fails or times out must not lose
events. Their receipt handles go into the new cursor instead. When the next tick starts with that
cursor, the previous result was committed, so the helper deletes those messages first
(`delete_message_batch`, at most 10 a call) and then receives the next batch.

Visibility timeout: a received message stays invisible for the queue's visibility timeout (or
`visibility_timeout` given here), then reappears if it was not deleted. A tick that failed, a
cursor that was lost, or a sensor interval longer than the timeout therefore yields the same
events again. That is the at-least-once contract: sensors use deterministic run keys
(`S3ObjectEvent.identity`: bucket, key and etag), so duplicates launch nothing twice. Keep the
timeout well above the sensor interval (the local stack uses 300 s) so that, normally, a message
is deleted by the next tick before it can reappear. Deleting with a handle that has expired or
was already used is tolerated and only counted.

Malformed messages (a body that is not JSON or not an S3 event) are skipped with a warning and
acknowledged like the others, so a poison message cannot come back forever. `s3:TestEvent`
messages, which S3 sends when notifications are configured, are skipped silently and acknowledged.
Events lost altogether (retention expired while the sensor was off) are what the slower
reconciliation listing is for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from credflow_assets.resources.s3 import AwsClientResource

logger = logging.getLogger(__name__)

_RECEIVE_LIMIT = 10  # SQS returns at most 10 messages per ReceiveMessage
_DELETE_LIMIT = 10  # and deletes at most 10 per DeleteMessageBatch


@dataclass(frozen=True)
class S3ObjectEvent:
    """One object-created event, with the key URL-decoded."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    event_time: str | None
    sequencer: str | None
    event_name: str = ""
    principal: str | None = None  # who uploaded: the record's userIdentity.principalId

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def identity(self) -> str:
        """A deterministic run key: bucket, key and etag (sequencer or size if there is no etag).

        A redelivered event gives the same string; an upload of new content under the same key
        gives a new one (re-uploading identical bytes gives the same etag, so it is not rerun).
        """
        version = self.etag or self.sequencer or (str(self.size) if self.size is not None else "")
        return f"{self.bucket}/{self.key}@{version}"


@dataclass(frozen=True)
class S3EventBatch:
    """What one tick drained: the events, and the receipts to acknowledge on the next tick."""

    events: list[S3ObjectEvent]
    receipts: list[str]
    received: int = 0  # messages received this tick (including skipped ones)
    skipped: int = 0  # test events and malformed messages among them
    acknowledged: int = 0  # previous tick's messages deleted now
    acknowledge_failed: int = 0  # previous handles SQS refused (expired, already deleted)
    full: bool = False  # the batch reached max_messages: more may be waiting


@dataclass(frozen=True)
class S3EventCursor:
    """A JSON sensor cursor: receipts awaiting acknowledgement, plus the sensor's own state."""

    pending_receipts: tuple[str, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: str | None) -> S3EventCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(tuple(data.get("pending_receipts", ())), dict(data.get("state", {})))

    def to_json(self) -> str:
        return json.dumps(
            {"pending_receipts": list(self.pending_receipts), "state": self.state},
            sort_keys=True,
        )

    def advance(self, batch: S3EventBatch, **state: Any) -> S3EventCursor:
        """The cursor for the tick that produced `batch` (state keys given here are updated)."""
        return S3EventCursor(tuple(batch.receipts), {**self.state, **state})


def parse_s3_event_message(body: str) -> list[S3ObjectEvent] | None:
    """The S3 object events in one SQS message body; [] for a test event; None if malformed.

    Accepts the S3 notification format, also wrapped in an SNS envelope (S3 → SNS → SQS).
    """
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("Type") == "Notification" and "Message" in data:
            data = json.loads(data["Message"])
        if not isinstance(data, dict):
            return None
        if data.get("Event") == "s3:TestEvent":
            return []
        records = data["Records"]
        events = []
        for record in records:
            s3 = record["s3"]
            obj = s3["object"]
            size = obj.get("size")
            events.append(
                S3ObjectEvent(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    size=int(size) if size is not None else None,
                    etag=(obj.get("eTag") or obj.get("etag") or "").strip('"') or None,
                    event_time=record.get("eventTime"),
                    sequencer=obj.get("sequencer"),
                    event_name=record.get("eventName", ""),
                    principal=(record.get("userIdentity") or {}).get("principalId") or None,
                )
            )
        return events
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class SqsResource(AwsClientResource):
    """SQS client (built lazily, kept private) and the S3-event drain the sensors share."""

    service_name = "sqs"

    def queue_url(self, queue_name: str) -> str:
        return self.client.get_queue_url(QueueName=queue_name)["QueueUrl"]

    def drain_s3_events(
        self,
        queue_url: str,
        *,
        acknowledge: Iterable[str] = (),
        max_messages: int = 100,
        wait_time_seconds: int = 1,
        visibility_timeout: int | None = None,
        max_seconds: float = 20.0,
        log: logging.Logger | None = None,
    ) -> S3EventBatch:
        """Acknowledge the previous tick's messages, then receive a bounded batch of S3 events.

        - `acknowledge`: receipt handles from the previous cursor
          (`S3EventCursor.pending_receipts`); those messages are deleted first. Failures per handle (expired, already deleted) are
          counted in `acknowledge_failed`, not raised.
        - Receives up to `max_messages` messages in calls of at most 10, each long-polling up to
          `wait_time_seconds`, stopping at an empty receive or after `max_seconds`.
        - Nothing received here is deleted here: `batch.receipts` goes into the new cursor.

        See the module docstring for the at-least-once contract and the visibility timeout.
        """
        log = log or logger
        acknowledged, acknowledge_failed = self.delete_receipts(queue_url, acknowledge, log=log)

        latest_receipt: dict[str, str] = {}  # message id -> most recent receipt handle
        events: list[S3ObjectEvent] = []
        skipped = 0
        deadline = time.monotonic() + max_seconds
        while len(latest_receipt) < max_messages and time.monotonic() < deadline:
            kwargs: dict[str, Any] = {
                "QueueUrl": queue_url,
                "MaxNumberOfMessages": min(_RECEIVE_LIMIT, max_messages - len(latest_receipt)),
                "WaitTimeSeconds": wait_time_seconds,
            }
            if visibility_timeout is not None:
                kwargs["VisibilityTimeout"] = visibility_timeout
            messages = self.client.receive_message(**kwargs).get("Messages", [])
            if not messages:
                break
            for message in messages:
                message_id = message["MessageId"]
                seen = message_id in latest_receipt
                latest_receipt[message_id] = message["ReceiptHandle"]
                if seen:
                    continue  # redelivered within this drain: keep the newest handle only
                parsed = parse_s3_event_message(message.get("Body", ""))
                if parsed is None:
                    skipped += 1
                    log.warning(
                        "Skipping malformed message %s on %s (acknowledged next tick): %.200r",
                        message_id,
                        queue_url,
                        message.get("Body", ""),
                    )
                elif not parsed:
                    skipped += 1  # s3:TestEvent
                else:
                    events.extend(parsed)

        return S3EventBatch(
            events=events,
            receipts=list(latest_receipt.values()),
            received=len(latest_receipt),
            skipped=skipped,
            acknowledged=acknowledged,
            acknowledge_failed=acknowledge_failed,
            full=len(latest_receipt) >= max_messages,
        )

    def delete_receipts(
        self, queue_url: str, receipts: Iterable[str], *, log: logging.Logger | None = None
    ) -> tuple[int, int]:
        """Delete messages by receipt handle, 10 a call; return (deleted, refused).

        Handles SQS refuses (expired, already deleted, malformed) are logged and counted; an
        error for the whole call (e.g. the queue does not exist) is raised.
        """
        log = log or logger
        handles = list(dict.fromkeys(r for r in receipts if r))
        deleted = refused = 0
        for chunk in _chunks(handles, _DELETE_LIMIT):
            response = self.client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)],
            )
            deleted += len(response.get("Successful", []))
            failed = response.get("Failed", [])
            refused += len(failed)
            for failure in failed:
                log.info(
                    "SQS did not delete a message on %s (%s: %s); it may reappear and be "
                    "handled again (run keys make that harmless)",
                    queue_url,
                    failure.get("Code"),
                    failure.get("Message", "")[:200],
                )
        return deleted, refused


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
