"""The raw copy: a provider's file exactly as downloaded, stored immutably in S3.

`store_raw_copy` gives the partition's raw copy for this step. The recorded one is reused,
without contacting the SFTP server (providers delete files), when it is the version the run
asked for (or was stored by this run: a retry of the step) and is still complete in S3.
Otherwise the file (and its `.sig`) is downloaded from the provider's SFTP server into the
step's scratch directory and stored at `raw/{provider}/{date of mtime}/{name}` with its size
and sha256. A raw copy is never overwritten: another version of the same name and date goes to
its alternate key (`names.raw_keys`), and a key already holding this very version is reused
without a download. The download stays on disk for the landing in the same step
(`StoredRaw.download`, checked again by `raw_file.py`).

When the same step lands the file, the data file's raw copy is uploaded in a thread while the
landing runs (`StoredRaw.pending`; the two uploads overlap instead of following each other):
the landing's own upload waits for it before its last byte (`wait_for_raw_copy`), so no
landed file is completed before its raw copy is stored, and the raw copy's materialization is
still yielded first.
"""

from __future__ import annotations

import posixpath
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import dagster as dg

from credflow_assets.common.materializations import latest_materialization
from credflow_assets.provider_feeds.failures import FileRef, file_failure, scratch_scrub
from credflow_assets.provider_feeds.limits import human_size
from credflow_assets.provider_feeds.memory import limit_malloc_arenas, release_freed_memory
from credflow_assets.provider_feeds.names import (
    SIGNATURE_SUFFIX,
    RemoteIdentity,
    parse_partition_key,
    raw_asset_key,
    raw_keys,
    signature_keys,
)
from credflow_assets.provider_feeds.open_uploads import RunUploads
from credflow_assets.provider_feeds.raw_file import sha256_file
from credflow_assets.provider_feeds.settings import MiB, ProviderFeedsSettings
from credflow_assets.resources.s3 import head_object_or_none, s3_uri, upload_stream
from credflow_assets.resources.sftp import SftpNoSuchFile

PROGRESS_LOG_SECONDS = 15


@dataclass
class StoredRaw:
    copy: dict[str, Any]  # what the materialization records as `raw_copy`
    reused: bool  # the recorded raw copy, nothing downloaded
    seconds: dict[str, float] = field(default_factory=dict)
    download: Optional[Path] = None  # the data file downloaded by this step, kept for landing
    pending: Optional[Future] = None  # its raw copy's upload, running in a thread (None: done)
    stored_line: str = ""  # the log line that says it is stored, told once it is


def wait_for_raw_copy(context, stored: StoredRaw, ref: FileRef) -> None:
    """Wait for the raw copy's upload started in a thread (no-op if there is none); its
    failure is the file's, as if it had been uploaded before the landing."""
    if stored.pending is None:
        return
    try:
        stored.pending.result()
    except Exception as error:  # noqa: BLE001 - classified in file_failure
        raise file_failure(ref, "store the raw copy", error, log=context.log) from None
    finally:
        stored.pending = None
    context.log.info(f"{stored.stored_line} in {stored.seconds.get('upload', 0.0):.1f}s")


def store_raw_copy(context, sftp, client, settings: ProviderFeedsSettings, ref: FileRef,
                   work: Path, *, keep_download: bool) -> StoredRaw:
    """The partition's raw copy, reused or downloaded and stored (see the module docstring);
    with `keep_download`, the data file downloaded here is left in `work/raw/` for landing,
    and its raw copy is still uploading when this returns (`StoredRaw.pending`: the caller
    waits for it with `wait_for_raw_copy`)."""
    wanted = RemoteIdentity.from_tags(context.run.tags)
    recorded, recorded_by = _recorded_raw_copy(context.instance, context.partition_key)
    if recorded is not None and (wanted is None or recorded_by == context.run.run_id
                                 or identity_of(recorded) == wanted):
        try:
            missing = [key for key in _copy_keys(recorded)
                       if head_object_or_none(client, recorded["bucket"], key) is None]
        except Exception as error:  # noqa: BLE001 - classified in file_failure
            raise file_failure(ref, "check the raw copy", error, log=context.log) from None
        if not missing:
            context.log.info(
                f"{ref}: raw copy {s3_uri(recorded['bucket'], recorded['key'])} already stored "
                "(size and mtime match); the SFTP server is not contacted"
            )
            return StoredRaw(recorded, reused=True)
        context.log.warning(f"{ref}: raw copy incomplete in S3 (missing {missing}); fetching again")

    stored = StoredRaw({}, reused=False)
    try:
        with sftp.open_session() as session:
            stored.copy, stored.download = _fetch_raw(context, session, client, settings, ref,
                                                      wanted, work, stored,
                                                      background=keep_download)
    except BaseException as error:
        if stored.pending is not None:  # the data file uploading; its .sig failed
            stored.pending.exception()  # wait: its outcome is reused or redone by a rerun
        if isinstance(error, dg.Failure) or not isinstance(error, Exception):
            raise
        raise file_failure(ref, "download", error, scrub=scratch_scrub(work),
                           log=context.log) from None
    if stored.download is not None and not keep_download:
        stored.download.unlink(missing_ok=True)
        stored.download = None
    return stored


def _fetch_raw(context, session, client, settings: ProviderFeedsSettings, ref: FileRef,
               wanted: Optional[RemoteIdentity], work: Path, stored: StoredRaw, *,
               background: bool) -> tuple[dict[str, Any], Optional[Path]]:
    """(the raw copy, the data file downloaded into `work/raw/`, None if it was stored);
    with `background`, the data file's upload is left running in `stored.pending`."""
    seconds = stored.seconds
    remote = session.stat(ref.remote_path)
    if remote.is_dir:
        raise file_failure(ref, "download", "it is a directory, not a file", transient=False)
    if wanted is not None and (remote.size, remote.mtime) != (wanted.size, wanted.mtime):
        context.log.warning(
            f"{ref}: changed since the sensor listed it (size {wanted.size} -> {remote.size}, "
            f"mtime {wanted.mtime} -> {remote.mtime}); storing the current version"
        )
    data, download = _store_version(
        context, session, client, settings, ref, ref.remote_path, remote,
        raw_keys(ref.provider, ref.remote_path, remote.size, remote.mtime), work / "raw", seconds,
        in_background=stored if background else None)
    signature = None
    if wanted is None or wanted.signature is not None:
        sig_path = ref.remote_path + SIGNATURE_SUFFIX
        try:
            sig_remote = session.stat(sig_path)
        except SftpNoSuchFile:
            sig_remote = None
        if sig_remote is not None and not sig_remote.is_dir:
            signature, sig_download = _store_version(
                context, session, client, settings, ref, sig_path, sig_remote,
                signature_keys(data["key"], sig_remote.size, sig_remote.mtime), work / "sig",
                seconds)
            if sig_download is not None:  # the landing reads it back, checked, from S3
                sig_download.unlink(missing_ok=True)
        elif wanted is not None:
            context.log.warning(f"{ref}: the sensor saw {sig_path}, which is gone now")
    return ({"provider": ref.provider, "remote_path": ref.remote_path,
             "bucket": settings.bucket, **data, "signature": signature}, download)


def _store_version(context, session, client, settings: ProviderFeedsSettings, ref: FileRef,
                   remote_path: str, remote, keys: tuple[str, ...], directory: Path,
                   seconds: dict[str, float], *, in_background: Optional[StoredRaw] = None,
                   ) -> tuple[dict[str, Any], Optional[Path]]:
    """Store one version of a remote file under the first free key: (what is stored there,
    the local download in `directory`, or None when a key already held this version). With
    `in_background`, the upload runs in a thread, left in `in_background.pending`."""
    target, existing = _free_key(context, client, settings.bucket, ref, remote_path, remote,
                                 keys)
    if existing is not None:
        return existing, None
    local = directory / posixpath.basename(remote_path)
    started = time.monotonic()
    context.log.info(f"{ref}: downloading {remote_path} ({human_size(remote.size)})")
    result = session.download(remote_path, local, progress=_progress(context, ref, remote_path))
    seconds["download"] = seconds.get("download", 0.0) + time.monotonic() - started
    if (result.size, result.mtime) != (remote.size, remote.mtime):
        raise file_failure(ref, "download", f"{remote_path} changed while it was fetched "
                           "(size or mtime); it is retried", transient=True)
    digest = sha256_file(local)
    downloaded = (f"{ref}: downloaded {remote_path} ({human_size(result.size)}) in "
                  f"{result.seconds:.1f}s"
                  + (f", resumed at {list(result.resumed_from)}" if result.resumed else ""))

    def upload() -> None:
        started = time.monotonic()
        _upload_raw(context, client, settings, ref, remote_path, remote, local, target, digest)
        seconds["upload"] = seconds.get("upload", 0.0) + time.monotonic() - started

    where = f"raw copy stored at {s3_uri(settings.bucket, target)} (sha256 {digest[:16]}…)"
    if in_background is None:
        upload()
        context.log.info(f"{downloaded}; {where} in {seconds['upload']:.1f}s")
    else:
        context.log.info(downloaded)
        in_background.stored_line = f"{ref}: {where}, uploaded while the file landed"
        in_background.pending = _in_thread(upload)
    return {"key": target, "size": result.size, "sha256": digest,
            "remote_size": remote.size, "remote_mtime": remote.mtime}, local


def _in_thread(work) -> Future:
    """`work()` running in a thread of its own; its outcome in the future returned."""
    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(work())
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits for it
            outcome.set_exception(error)

    threading.Thread(target=run, name="credflow-raw-copy-upload", daemon=True).start()
    return outcome


def _free_key(context, client, bucket: str, ref: FileRef, remote_path: str, remote,
              keys: tuple[str, ...]) -> tuple[str, Optional[dict[str, Any]]]:
    """(the first key free for this version, None); or (its key, what is stored there) when a
    key already holds this version (same remote size and mtime). A key holding another
    version is never overwritten."""
    for key in keys:
        head = head_object_or_none(client, bucket, key)
        if head is None:
            return key, None
        meta = head.get("Metadata", {})
        if (meta.get("remote-size"), meta.get("remote-mtime")) == (str(remote.size),
                                                                    str(remote.mtime)):
            context.log.info(f"{ref}: {remote_path} already stored at {s3_uri(bucket, key)}")
            return key, {"key": key, "size": head["ContentLength"],
                         "sha256": meta.get("sha256", ""),
                         "remote_size": remote.size, "remote_mtime": remote.mtime}
    raise file_failure(ref, "store the raw copy",
                       f"every raw key for this version is taken by another version: {keys}",
                       transient=False)


def _upload_raw(context, client, settings: ProviderFeedsSettings, ref: FileRef,
                remote_path: str, remote, local: Path, key: str, digest: str) -> None:
    bucket = settings.bucket
    limit_malloc_arenas()  # before the upload's threads start (see memory.py)
    # By path: each part is read from disk as it is sent, not held in memory (s3.py).
    upload_stream(
        client, local, bucket, key,
        max_concurrency=settings.upload_concurrency,
        part_size=settings.part_size(remote.size),
        multipart_threshold=settings.raw_copy_single_put_mib * MiB + 1,  # one PutObject up to it
        **RunUploads(context.instance, context.run.run_id, bucket).callbacks(key),
        extra_args={
            "ContentType": "application/octet-stream",
            "Metadata": {
                "provider": ref.provider,
                "remote-path": quote(remote_path),
                "remote-size": str(remote.size),
                "remote-mtime": str(remote.mtime),
                "sha256": digest,
            },
        },
    )
    release_freed_memory()  # the upload's freed part buffers (see memory.py)


def latest_raw_copy(instance: dg.DagsterInstance, partition: str) -> Optional[dict[str, Any]]:
    """The raw copy recorded by the partition's latest raw materialization, if any."""
    return _recorded_raw_copy(instance, partition)[0]


def _recorded_raw_copy(instance: dg.DagsterInstance,
                       partition: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the latest recorded raw copy, the run that recorded it), or (None, None)."""
    provider, _ = parse_partition_key(partition)
    record = latest_materialization(instance, raw_asset_key(provider), partition)
    if record is None:
        return None, None
    entry = record.asset_materialization.metadata.get("raw_copy")
    return (entry.value, record.run_id) if entry is not None else (None, None)


def identity_of(copy: dict[str, Any]) -> RemoteIdentity:
    signature = copy.get("signature")
    return RemoteIdentity(
        copy["remote_size"], copy["remote_mtime"],
        (signature["remote_size"], signature["remote_mtime"]) if signature else None,
    )


def _copy_keys(copy: dict[str, Any]) -> list[str]:
    return [copy["key"]] + ([copy["signature"]["key"]] if copy.get("signature") else [])


def _progress(context, ref: FileRef, remote_path: str):
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_LOG_SECONDS and total:
            last[0] = now
            context.log.info(f"{ref}: downloading {remote_path}: {done * 100 // total}% "
                             f"({human_size(done)} of {human_size(total)})")

    return report
