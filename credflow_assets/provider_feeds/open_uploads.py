"""The multipart uploads a run has open, kept in its run tags, so that another process can abort
them once the run is over.

S3 keeps an open multipart upload's parts (and bills them) until it is completed or aborted.
s3transfer aborts an upload that fails, but a process killed mid-upload aborts nothing. So
each upload's id is written into the run's tags as soon as S3 opens it and taken out once it
is completed or aborted: a run that ends with `OPEN_UPLOADS_TAG` at "yes" left uploads open,
and `cleanup.py` aborts exactly those (`OPEN_UPLOAD_IDS_TAG`), whichever host it ran on. The
tags live in the Dagster instance, so they outlive the run's machine (a Kubernetes pod's
scratch disk goes with the pod; its run's tags do not).

Two tags, because run filters match exact values: "yes" finds the runs to clean in one query.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import dagster as dg

OPEN_UPLOADS_TAG = "credflow/open_uploads"  # "yes" while the run has a multipart upload open
OPEN_UPLOAD_IDS_TAG = "credflow/open_upload_ids"  # JSON: [[bucket, key, upload id], …]

_open: dict[str, list[list[str]]] = {}  # run id → its open uploads, in this process
_lock = threading.Lock()


class RunUploads:
    """Records one run's multipart uploads in its tags (see the module docstring)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, bucket: str):
        self._instance, self._run_id, self._bucket = instance, run_id, bucket

    def callbacks(self, key: str) -> dict[str, Any]:
        """`upload_stream`'s `on_multipart_started` / `on_multipart_ended` for `key`."""
        return {
            "on_multipart_started": lambda upload_id: self._change(
                lambda uploads: uploads + [[self._bucket, key, upload_id]]),
            "on_multipart_ended": lambda upload_id: self._change(
                lambda uploads: [upload for upload in uploads if upload[2] != upload_id]),
        }

    def _change(self, change) -> None:
        with _lock:  # an upload's threads, or two steps of a process, may report at once
            uploads = _open[self._run_id] = change(_open.get(self._run_id, []))
            if not uploads:
                _open.pop(self._run_id, None)
            self._instance.add_run_tags(self._run_id, {
                OPEN_UPLOADS_TAG: "yes" if uploads else "no",
                OPEN_UPLOAD_IDS_TAG: json.dumps(uploads, separators=(",", ":")),
            })


def recorded_uploads(run: dg.DagsterRun) -> list[tuple[str, str, str]]:
    """(bucket, key, upload id) of every upload `run` recorded as open."""
    if run.tags.get(OPEN_UPLOADS_TAG) != "yes":
        return []
    try:
        return [(bucket, key, upload_id)
                for bucket, key, upload_id in json.loads(run.tags.get(OPEN_UPLOAD_IDS_TAG, "[]"))]
    except (ValueError, TypeError):
        return []


def mark_closed(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.add_run_tags(run_id, {OPEN_UPLOADS_TAG: "no", OPEN_UPLOAD_IDS_TAG: "[]"})
