"""gpg's plaintext as a stream of chunks, so that decryption overlaps decompression and upload.

`decrypted_chunks` runs `gpg --decrypt` (`GpgResource.decrypt_to`) in a thread that hands the
plaintext over a bounded queue, `CHUNK` bytes at a time (gpg writes 4 KiB at a time; one queue
item per 4 KiB cost more than gpg itself). gpg's verdict, its integrity check included, comes
only after its last byte, so the iterator raises gpg's error, if any, before it tells the end:
a multipart upload reading it aborts rather than completes, and nothing unverified lands.

Memory stays bounded: at most `QUEUE_CHUNKS` chunks (2 MiB) wait in the queue, and gpg blocks on its
pipe while they do. A consumer that stops early (an upload that failed) closes the iterator,
which stops gpg (the next write raises, and `decrypt_to` kills gpg on it).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from credflow_assets.provider_feeds.unpack import CHUNK

QUEUE_CHUNKS = 2  # plaintext waiting for the decompressor: 2 MiB at most
_END = object()
_POLL_SECONDS = 0.2


class _Stopped(Exception):
    """The reading side went away; raised in gpg's writer to stop it."""


class _QueueWriter:
    """The `out` gpg's plaintext is written to: gathered into `CHUNK`-byte items for a queue."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.stopped = threading.Event()
        self._gathered = bytearray()

    def write(self, data: Any) -> None:
        self._gathered += data  # `data` is gpg's reused buffer: copied here
        if len(self._gathered) >= CHUNK:
            self.put(bytes(self._gathered))
            self._gathered.clear()

    def flush_gathered(self) -> None:
        if self._gathered:
            self.put(bytes(self._gathered))
            self._gathered.clear()

    def put(self, item: object) -> None:
        while True:
            if self.stopped.is_set():
                raise _Stopped()
            try:
                self.items.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue


def decrypted_chunks(gpg, src: Path, *, seconds: dict[str, float],
                     max_output_bytes: Optional[int]) -> Iterator[bytes]:
    """The plaintext of `src`, `CHUNK` bytes at a time; gpg's error (a `GpgError`, or
    `GpgOutputLimitExceeded` past `max_output_bytes`) is raised before the end is told.
    `seconds["decrypt"]` gets gpg's time, from its start to its verdict."""
    writer = _QueueWriter()
    outcome: list[BaseException] = []

    def decrypt() -> None:
        started = time.monotonic()
        try:
            gpg.decrypt_to(src, writer, max_output_bytes=max_output_bytes)
            writer.flush_gathered()
        except _Stopped:
            return
        except BaseException as error:  # noqa: BLE001 - handed to the reading side
            outcome.append(error)
        finally:
            seconds["decrypt"] = seconds.get("decrypt", 0.0) + time.monotonic() - started
        try:
            writer.put(_END)
        except _Stopped:
            pass

    thread = threading.Thread(target=decrypt, name="credflow-gpg-decrypt", daemon=True)
    thread.start()
    try:
        while (item := writer.items.get()) is not _END:
            yield item
        thread.join()
        if outcome:
            raise outcome[0]
    finally:
        writer.stopped.set()  # a consumer that stops early stops gpg
        thread.join()
