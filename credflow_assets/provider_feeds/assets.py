"""A provider's file → its immutable raw copy in S3 → verified, decrypted, decompressed, landed.

One partition per file (`{provider}/{remote path}`), in the provider's own partition set. Two
assets per provider, run together by the provider's job (names: naming.py):

- `s3/provider_feeds/{provider}_raw` downloads the file (and its `.sig`) from the provider's SFTP
  server into `raw/{provider}/{date of mtime}/{name}`, with size and sha256. Raw copies are never
  overwritten. A rerun whose raw copy exists reuses it without contacting the SFTP server
  (providers delete files).
- `s3/provider_feeds/{provider}_landed` reads only the raw copy: verifies the signature, decrypts,
  decompresses and uploads each resulting file to `data/{csv|pdf|xml|other}/{folder}/{name}`.

Each asset requires only its own provider's resources, so a provider whose SFTP server or
secret is missing fails its own files and no one else's.

Files stream through a scratch directory: SFTP → disk → S3 raw copy; raw copy → gpg → disk →
decompress, count CSV records and multipart upload in one pass (`streams.py`; archives are
extracted to disk first, so that an unsafe member refuses the whole archive before anything
lands). Every layer (gpg's plaintext, each decompression, each archive member) stops past the
provider's limits (`limits.py`). The raw copy comes from S3, or, right after the raw step of the
same run in the same process, from that step's local file once it matches the recorded key,
size and sha256 (`handoff.py`). The scratch directory goes away after every file, whether it
landed or failed, and a dead run's is removed by the next run (`scratch.py`). Every failure
names the provider, the file and the cause.
"""


import hashlib
import posixpath
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import dagster as dg

from credflow_assets.config import ProviderConfig
from credflow_assets.common.materializations import latest_metadata_value
from credflow_assets.common.parse_logs import logged_events
from credflow_assets.provider_feeds import handoff
from credflow_assets.provider_feeds.cleanup import clean_up_after_dead_runs
from credflow_assets.provider_feeds.failures import FileRef, RawCopyDamaged, file_failure
from credflow_assets.provider_feeds.limits import (
    ExpansionLimit,
    ExtractionLimitExceeded,
    human_size,
)
from credflow_assets.provider_feeds.memory import limit_malloc_arenas, release_freed_memory
from credflow_assets.provider_feeds.metadata import landed_metadata, raw_result
from credflow_assets.provider_feeds.open_uploads import RunUploads
from credflow_assets.resources.sftp import sftp_resource_key
from credflow_assets.provider_feeds.names import (
    GROUP,
    SIGNATURE_SUFFIX,
    RemoteIdentity,
    job_name,
    landed_asset_key,
    landed_key,
    parse_partition_key,
    provider_partitions,
    raw_asset_key,
    raw_keys,
    signature_keys,
)
from credflow_assets.provider_feeds.settings import (
    SETTINGS_KEY,
    MissingVariable,
    ProviderFeed,
    ProviderFeedsSettings,
    provider_feed_resource_key,
)
from credflow_assets.provider_feeds.rows import CsvRecordCounter
from credflow_assets.provider_feeds.streams import (
    UploadSource,
    file_chunks,
    gunzip_chunks,
    single_file_name,
)
from credflow_assets.provider_feeds.unpack import (
    CONTENT_TYPES,
    HEAD_BYTES,
    UnpackError,
    decrypted_name,
    detect_type_of_head,
    looks_encrypted,
    unpack,
)
from credflow_assets.resources.s3 import (
    head_object_or_none,
    s3_uri,
    transfer_config,
    upload_stream,
)
from credflow_assets.resources.gpg import GpgOutputLimitExceeded
from credflow_assets.resources.sftp import SftpNoSuchFile
from credflow_assets.common.run_recovery import mark_transient_failures

HASH_CHUNK = 1024 * 1024
PROGRESS_LOG_SECONDS = 15

# Transient SFTP/S3 errors only: every other failure is raised with allow_retries=False.
RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_provider_job(provider: ProviderConfig):
    """One file of `provider` per run: its raw copy, then its landing."""
    return dg.define_asset_job(
        job_name(provider.name),
        selection=dg.AssetSelection.assets(raw_asset_key(provider.name),
                                           landed_asset_key(provider.name)),
        executor_def=dg.in_process_executor,
        # An outage is requested again later (Dagster's run_retries); a bad file is not.
        hooks={mark_transient_failures},
        description=f"One file of provider {provider.name}: download the raw copy, then "
        "verify, decrypt, decompress and land it.",
    )


def build_provider_feed_assets(provider: ProviderConfig) -> list[dg.AssetsDefinition]:
    """The two assets of one provider, over its own files, requiring only its resources."""
    sftp_key = sftp_resource_key(provider.name)
    feed_key = provider_feed_resource_key(provider.name)
    partitions = provider_partitions(provider.name)
    raw_key, landed = raw_asset_key(provider.name), landed_asset_key(provider.name)

    @dg.asset(
        key=raw_key,
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"s3", "sftp"},
        retry_policy=RETRY_POLICY,
        required_resource_keys={"s3", SETTINGS_KEY, feed_key, sftp_key},
        description=f"A file of provider {provider.name} exactly as downloaded, stored "
        f"immutably at raw/{provider.name}/{{date}}/{{name}} with its size and sha256 (and its "
        ".sig beside it).",
    )
    def provider_file_raw(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with _one_file_failure(context, "store the raw copy"):
            return materialize_raw(context, sftp_key)

    @dg.asset(
        key=landed,
        deps=[raw_key],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"s3", "csv", "pdf"},
        retry_policy=RETRY_POLICY,
        required_resource_keys={"s3", SETTINGS_KEY, feed_key},
        description=f"A file of provider {provider.name}: its raw copy verified, decrypted and "
        f"decompressed; every resulting file at data/{{csv|pdf|xml|other}}/{provider.folder}/"
        "{name}.",
    )
    def provider_file_landed(context: dg.AssetExecutionContext):
        settings: ProviderFeedsSettings = getattr(context.resources, SETTINGS_KEY)
        yield from logged_events(context, _land(context), flow=GROUP,
                                 s3_client=s3_client_of(context), bucket=settings.logs_bucket)

    def _land(context: dg.AssetExecutionContext):
        try:
            with _one_file_failure(context, "land"):
                yield materialize_landed(context)
        finally:  # the raw step's file, if the landing failed before it took it
            handoff.discard(context.run.run_id, context.partition_key)

    return [provider_file_raw, provider_file_landed]


# ------------------------------------------------------------------------------ raw


def materialize_raw(context: dg.AssetExecutionContext, sftp_key: str) -> dg.MaterializeResult:
    ref = FileRef.from_partition_key(context.partition_key)
    _feed(context, ref)  # fails at once for a provider that is not in the config
    settings: ProviderFeedsSettings = getattr(context.resources, SETTINGS_KEY)
    client = s3_client_of(context)
    clean_up_after_dead_runs(context.instance, client, settings.work_dir, context.log)
    wanted = RemoteIdentity.from_tags(context.run.tags)
    recorded = latest_raw_copy(context.instance, context.partition_key)

    if recorded is not None and (wanted is None or identity_of(recorded) == wanted):
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
            return raw_result(client, recorded, reused=True, seconds={})
        context.log.warning(f"{ref}: raw copy incomplete in S3 (missing {missing}); fetching again")

    sftp = getattr(context.resources, sftp_key)
    seconds: dict[str, float] = {}
    with settings.scratch(ref.provider, run_id=context.run.run_id) as work:
        try:
            with sftp.open_session() as session:
                copy = _fetch_raw(context, session, client, settings, ref, wanted, work, seconds)
        except dg.Failure:
            raise
        except Exception as error:  # noqa: BLE001 - classified in file_failure
            raise file_failure(ref, "download", error, scrub={f"{work}/": ""},
                               log=context.log) from None
    return raw_result(client, copy, reused=False, seconds=seconds)


def _fetch_raw(context, session, client, settings: ProviderFeedsSettings, ref: FileRef,
               wanted: Optional[RemoteIdentity], work: Path,
               seconds: dict[str, float]) -> dict[str, Any]:
    remote = session.stat(ref.remote_path)
    if remote.is_dir:
        raise file_failure(ref, "download", "it is a directory, not a file", transient=False)
    if wanted is not None and (remote.size, remote.mtime) != (wanted.size, wanted.mtime):
        context.log.warning(
            f"{ref}: changed since the sensor listed it (size {wanted.size} -> {remote.size}, "
            f"mtime {wanted.mtime} -> {remote.mtime}); storing the current version"
        )
    data = _store_version(context, session, client, settings, ref, ref.remote_path, remote,
                          raw_keys(ref.provider, ref.remote_path, remote.size, remote.mtime),
                          work, seconds, keep=_keeper(context, settings, ref))
    signature = None
    if wanted is None or wanted.signature is not None:
        sig_path = ref.remote_path + SIGNATURE_SUFFIX
        try:
            sig_remote = session.stat(sig_path)
        except SftpNoSuchFile:
            sig_remote = None
        if sig_remote is not None and not sig_remote.is_dir:
            signature = _store_version(
                context, session, client, settings, ref, sig_path, sig_remote,
                signature_keys(data["key"], sig_remote.size, sig_remote.mtime), work, seconds,
            )
        elif wanted is not None:
            context.log.warning(f"{ref}: the sensor saw {sig_path}, which is gone now")
    return {"provider": ref.provider, "remote_path": ref.remote_path,
            "bucket": settings.bucket, **data, "signature": signature}


def _store_version(context, session, client, settings: ProviderFeedsSettings, ref: FileRef,
                   remote_path: str, remote, keys: tuple[str, ...], work: Path,
                   seconds: dict[str, float], keep=None) -> dict[str, Any]:
    """Download one version of a remote file and store it under the first free key.

    A key already holding this version (same remote size and mtime) is reused without a
    download; a key holding another version is never overwritten. `keep(local, stored)`, if
    given, takes the downloaded file once it is stored (for the landed step).
    """
    bucket = settings.bucket
    target = None
    for key in keys:
        head = head_object_or_none(client, bucket, key)
        if head is None:
            target = key
            break
        meta = head.get("Metadata", {})
        if (meta.get("remote-size"), meta.get("remote-mtime")) == (str(remote.size),
                                                                    str(remote.mtime)):
            context.log.info(f"{ref}: {remote_path} already stored at {s3_uri(bucket, key)}")
            return {"key": key, "size": head["ContentLength"], "sha256": meta.get("sha256", ""),
                    "remote_size": remote.size, "remote_mtime": remote.mtime}
    if target is None:
        raise file_failure(ref, "store the raw copy",
                           f"every raw key for this version is taken by another version: {keys}",
                           transient=False)

    local = work / posixpath.basename(remote_path)
    started = time.monotonic()
    context.log.info(f"{ref}: downloading {remote_path} ({human_size(remote.size)})")
    result = session.download(remote_path, local, progress=_progress(context, ref, remote_path))
    seconds["download"] = seconds.get("download", 0.0) + time.monotonic() - started
    if (result.size, result.mtime) != (remote.size, remote.mtime):
        raise file_failure(ref, "download", f"{remote_path} changed while it was fetched "
                           "(size or mtime); it is retried", transient=True)
    digest = sha256_file(local)
    started = time.monotonic()
    limit_malloc_arenas()  # before the upload's threads start (see memory.py)
    with open(local, "rb") as stream:
        upload_stream(
            client, stream, bucket, target,
            max_concurrency=settings.upload_concurrency,
            part_size=settings.part_size(remote.size),
            **RunUploads(context.instance, context.run.run_id, bucket).callbacks(target),
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
    seconds["upload"] = seconds.get("upload", 0.0) + time.monotonic() - started
    release_freed_memory()  # the upload's freed part buffers (see memory.py)
    context.log.info(
        f"{ref}: downloaded {remote_path} ({human_size(result.size)}) in {result.seconds:.1f}s"
        + (f", resumed at {list(result.resumed_from)}" if result.resumed else "")
        + f"; raw copy stored at {s3_uri(bucket, target)} (sha256 {digest[:16]}…) in "
        f"{time.monotonic() - started:.1f}s")
    stored = {"key": target, "size": result.size, "sha256": digest,
              "remote_size": remote.size, "remote_mtime": remote.mtime}
    try:
        if keep is not None:
            keep(local, stored)
    except OSError as error:  # the landing then fetches the raw copy from S3: slower, not wrong
        context.log.warning(f"{ref}: cannot keep {remote_path} for the landing: {error}")
    local.unlink(missing_ok=True)
    return stored


def _keeper(context, settings: ProviderFeedsSettings, ref: FileRef):
    """Hands the downloaded file to this run's landed step, unless the run leaves it out."""
    selection = context.run.asset_selection  # None or empty: the whole job
    if selection and landed_asset_key(ref.provider) not in selection:
        return None
    instance = context.instance

    def run_is_over(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is None or run.is_finished

    def keep(local: Path, stored: dict[str, Any]) -> None:
        handoff.keep(context.run.run_id, context.partition_key, local, key=stored["key"],
                     size=stored["size"], sha256=stored["sha256"], work_dir=settings.work_dir,
                     provider=ref.provider, run_is_over=run_is_over)

    return keep


def latest_raw_copy(instance: dg.DagsterInstance, partition: str) -> Optional[dict[str, Any]]:
    """The raw copy recorded by the partition's latest raw materialization, if any."""
    provider, _ = parse_partition_key(partition)
    return latest_metadata_value(instance, raw_asset_key(provider), partition, "raw_copy")


def identity_of(copy: dict[str, Any]) -> RemoteIdentity:
    signature = copy.get("signature")
    return RemoteIdentity(
        copy["remote_size"], copy["remote_mtime"],
        (signature["remote_size"], signature["remote_mtime"]) if signature else None,
    )


def _copy_keys(copy: dict[str, Any]) -> list[str]:
    return [copy["key"]] + ([copy["signature"]["key"]] if copy.get("signature") else [])


# ------------------------------------------------------------------------------ landed


def materialize_landed(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    ref = FileRef.from_partition_key(context.partition_key)
    feed = _feed(context, ref)
    settings: ProviderFeedsSettings = getattr(context.resources, SETTINGS_KEY)
    client = s3_client_of(context)
    clean_up_after_dead_runs(context.instance, client, settings.work_dir, context.log)
    try:
        feed.check_variables()  # its passphrase, GnuPG home, signing key: before any work
    except MissingVariable as error:
        raise file_failure(ref, "land", error, transient=False) from None
    copy = latest_raw_copy(context.instance, context.partition_key)
    if copy is None:
        raise file_failure(ref, "land", "no raw copy is recorded; materialize "
                           f"{raw_asset_key(ref.provider).to_user_string()} for this partition "
                           "first", transient=False)
    raw_uri = s3_uri(copy["bucket"], copy["key"])
    name = posixpath.basename(ref.remote_path)
    limit = ExpansionLimit(feed.max_extracted_bytes, feed.max_expansion_ratio, copy["size"])
    uploads = RunUploads(context.instance, context.run.run_id, settings.bucket)
    seconds: dict[str, float] = {}
    stage = "fetch the raw copy"
    with settings.scratch(ref.provider, run_id=context.run.run_id) as work:
        scrub = {f"{work}/raw/": "", f"{work}/plain/": "", f"{work}/sig/": "",
                 str(work): "(scratch)"}

        def verify_and_decrypt(raw_local: Path):
            nonlocal stage
            stage = "verify the signature"
            with _timed(seconds, "verify"):
                signer = _verify(client, settings, feed, ref, copy, raw_local, work / "sig")
            stage = "decrypt"
            if not looks_encrypted(raw_local, name):
                return signer, False, raw_local, name
            plain_name = decrypted_name(name)
            with _timed(seconds, "decrypt"):
                try:
                    decrypted = feed.gpg().decrypt_file(raw_local, work / "plain" / plain_name,
                                                        max_output_bytes=limit.max_bytes)
                except GpgOutputLimitExceeded:
                    raise limit.exceeded("the decrypted content") from None
            raw_local.unlink()
            return signer, True, decrypted.dest_path, plain_name

        try:
            with _timed(seconds, "fetch_raw"):
                taken, source = _raw_for_landing(context, client, settings, copy,
                                                 work / "raw" / name)
            raw_local = taken.path if taken is not None else work / "raw" / name
            failed = None  # (stage, error) of a local file, reported only if it is the copy
            try:
                signer, encrypted, plain, plain_name = verify_and_decrypt(raw_local)
            except Exception as error:  # noqa: BLE001 - re-raised below unless a refetch
                if taken is None:
                    raise
                failed = (stage, error)
            stage = "fetch the raw copy"
            with _timed(seconds, "fetch_raw"):
                verified = taken is None or taken.verified()
            if failed is not None and verified:
                stage = failed[0]
                raise failed[1]
            if not verified:
                context.log.warning(f"{ref}: the raw step's local file is not the recorded raw "
                                    "copy (sha256 differs); fetching the raw copy from S3")
                raw_local.unlink(missing_ok=True)
                shutil.rmtree(work / "plain", ignore_errors=True)
                with _timed(seconds, "fetch_raw"):
                    raw_local, source = _fetch_copy(client, settings, copy, raw_local), "S3"
                signer, encrypted, plain, plain_name = verify_and_decrypt(raw_local)
            # One line for the steps before the upload: each log line is an event-log write.
            context.log.info(
                f"{ref}: raw copy {raw_uri} ({human_size(copy['size'])}) from {source}, sha256 "
                f"verified; signature " + (f"verified, signed by {signer}" if signer
                                           else "none (not required)")
                + (f"; decrypted to {plain_name} ({human_size(plain.stat().st_size)}) in "
                   f"{seconds['decrypt']:.1f}s" if encrypted else "; not encrypted"))

            stage = "decompress"
            single = single_file_name(plain, plain_name)
            if single is not None:
                # One file: decompressed, counted and uploaded in one pass, never on disk.
                found, inner = single
                chunks = (gunzip_chunks(plain, plain_name, limit=limit)
                          if found == "gzip" else file_chunks(plain))
                pending = [(inner, chunks, None)]
            else:
                with _timed(seconds, "decompress"):
                    found, files = unpack(plain, plain_name, work / "out", limit=limit)
                plain.unlink()
                context.log.info(f"{ref}: {found}: {len(files)} file(s) extracted in "
                                 f"{seconds['decompress']:.1f}s")
                pending = [(extracted.name, file_chunks(extracted.path), extracted.path)
                           for extracted in files]

            stage = "upload"
            landed = []
            for file_name, chunks, extracted_path in pending:
                entry, produced = _land_one(client, settings, feed, ref, copy, file_name, chunks,
                                            seconds, limit=limit, uploads=uploads)
                if extracted_path is not None:
                    extracted_path.unlink()  # frees the scratch disk as the archive lands
                if single is not None:
                    seconds["decompress"] = seconds.get("decompress", 0.0) + produced
                landed.append(entry)
                context.log.info(
                    f"{ref}: landed {file_name} at {s3_uri(settings.bucket, entry['key'])} "
                    f"({entry['type']}, {human_size(entry['size'])}"
                    + (f", {entry['rows']:,} row(s)" if entry["rows"] is not None else "") + ")"
                    + (f"; {found}, decompressed while uploading in {produced:.1f}s"
                       if single is not None and found != "none" else "")
                    + ("; not compressed" if found == "none" else "")
                )
        except dg.Failure:
            raise
        except Exception as error:  # noqa: BLE001 - classified in file_failure
            if isinstance(error, (UnpackError, ExtractionLimitExceeded)):
                stage = "decompress"  # raised by the decompressor while the upload read it
            raise file_failure(ref, stage, error, scrub=scrub,
                               metadata={"raw_uri": dg.MetadataValue.path(raw_uri)},
                               log=context.log) from None

    if not landed:
        context.log.warning(f"{ref}: the archive holds no regular files; nothing landed")
    return dg.MaterializeResult(metadata={
        **landed_metadata(client, ref, copy, raw_uri, found, encrypted, signer, landed,
                           seconds, settings),
        "raw_source": source,
        "decompressed_while_uploading": single is not None and found != "none",
    })


def _land_one(client, settings: ProviderFeedsSettings, feed: ProviderFeed, ref: FileRef,
              copy: dict[str, Any], name: str, chunks, seconds: dict[str, float], *,
              limit: ExpansionLimit, uploads: RunUploads) -> tuple[dict[str, Any], float]:
    """Upload one resulting file from its chunks, typing it by its first bytes and counting
    CSV records on the way; returns its `landed` entry and the seconds spent producing the
    bytes (decompression, when the chunks come from the decompressor)."""
    source = UploadSource(chunks)
    category = detect_type_of_head(source.head(HEAD_BYTES), name)
    counter = None
    if category == "csv":
        counter = CsvRecordCounter(delimiter="\t" if name.lower().endswith(".tsv") else ",")
        source.observe = counter.feed
    key = landed_key(category, feed.folder, name)
    limit_malloc_arenas()  # before the upload's threads start (see memory.py)
    with _timed(seconds, "upload"):
        upload_stream(
            client, source, settings.bucket, key,
            max_concurrency=settings.upload_concurrency,
            part_size=settings.part_size(limit.max_bytes),  # no file is bigger
            **uploads.callbacks(key),
            extra_args={
                "ContentType": CONTENT_TYPES[category],
                "Metadata": {"provider": ref.provider,
                             "source-raw-key": quote(copy["key"]),
                             "source-sha256": copy["sha256"]},
            },
        )
    release_freed_memory()  # the upload's freed part buffers (see memory.py)
    entry = {"key": key, "name": name, "type": category, "size": source.size,
             "rows": counter.data_rows if counter else None}
    if counter is not None and counter.note:
        entry["rows_note"] = counter.note
    return entry, source.seconds


def _raw_for_landing(context, client, settings: ProviderFeedsSettings, copy: dict[str, Any],
                     local: Path) -> tuple[Optional[handoff.TakenRawFile], str]:
    """The raw copy on local disk, and where it came from: this run's raw step's file when it
    is still here (its sha256 still being checked: see `TakenRawFile.verified`), else a
    download from S3, verified (None is returned for it: nothing left to check)."""
    taken, why = handoff.take(context.run.run_id, context.partition_key, copy, local, sha256_file)
    if taken is not None:
        return taken, why
    context.log.info(f"{FileRef.from_partition_key(context.partition_key)}: fetching the raw "
                     f"copy from S3 ({why})")
    _fetch_copy(client, settings, copy, local)
    return None, "S3"


def _fetch_copy(client, settings: ProviderFeedsSettings, stored: dict[str, Any],
                local: Path) -> Path:
    """Stream an S3 object to a local file and check it against its recorded sha256."""
    local.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(stored["bucket"], stored["key"], str(local),
                         Config=transfer_config(max_concurrency=settings.upload_concurrency))
    digest = sha256_file(local)
    if stored.get("sha256") and digest != stored["sha256"]:
        raise RawCopyDamaged(
            f"{s3_uri(stored['bucket'], stored['key'])} has sha256 {digest}, but "
            f"{stored['sha256']} was recorded when it was stored: the raw copy is damaged"
        )
    return local


def _verify(client, settings: ProviderFeedsSettings, feed: ProviderFeed, ref: FileRef,
            copy: dict[str, Any], raw_local: Path, sig_dir: Path) -> Optional[str]:
    """The signer's fingerprint; None when there is no signature and none is required."""
    signature = copy.get("signature")
    name = posixpath.basename(ref.remote_path)
    if signature is None:
        if feed.require_signature:
            raise file_failure(
                ref, "verify the signature",
                f"signature required (require_signature) but no {name}{SIGNATURE_SUFFIX} came "
                "with the file; refusing to land unverified data", transient=False,
            )
        return None
    signing_key_file = feed.setting("signing_key_file")
    if not signing_key_file:
        raise file_failure(
            ref, "verify the signature",
            f"{name}{SIGNATURE_SUFFIX} came with the file but provider {feed.name} has no "
            "signing_key_file to verify it with; refusing to land unverified data",
            transient=False,
        )
    try:
        armored = Path(signing_key_file).read_text()
    except OSError as error:
        raise file_failure(
            ref, "verify the signature",
            f"cannot read the provider's signing key {signing_key_file}: "
            f"{error.strerror or error}", transient=False,
        ) from None
    sig_local = _fetch_copy(client, settings, {**signature, "bucket": copy["bucket"]},
                            sig_dir / f"{name}{SIGNATURE_SUFFIX}")
    gpg = feed.gpg()
    allowed = gpg.import_keys(armored)
    return gpg.verify_detached(sig_local, raw_local, allowed_fingerprints=allowed)


# ------------------------------------------------------------------------------ helpers


@contextmanager
def _one_file_failure(context, stage: str) -> Iterator[None]:
    """Anything unforeseen still fails as this file's failure (retried only if transient)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as error:  # noqa: BLE001 - classified in file_failure
        raise file_failure(FileRef.from_partition_key(context.partition_key), stage,
                           error, log=context.log) from None


def s3_client_of(context):
    # Through `required_resource_keys`, dagster-aws's S3Resource (a resource factory) is
    # the boto3 client itself; as a typed parameter it is the resource with get_client().
    s3 = context.resources.s3
    return s3.get_client() if hasattr(type(s3), "get_client") else s3


def _feed(context, ref: FileRef) -> ProviderFeed:
    try:
        return getattr(context.resources, provider_feed_resource_key(ref.provider))
    except Exception:  # noqa: BLE001 - Dagster raises its own error for an unknown resource
        raise file_failure(ref, "find the provider", f"provider {ref.provider!r} is not this "
                           "job's provider, or not in the config; rerun the file from its own "
                           "provider's job", transient=False) from None



def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - started


def _progress(context, ref: FileRef, remote_path: str):
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_LOG_SECONDS and total:
            last[0] = now
            context.log.info(f"{ref}: downloading {remote_path}: {done * 100 // total}% "
                             f"({human_size(done)} of {human_size(total)})")

    return report
