"""A provider's file → its immutable raw copy in S3 → verified, decrypted, decompressed, landed.

One partition per file (`{provider}/{remote path}`), in the provider's own partition set. Two
assets per provider, materialized by one step per file (a multi-asset; names: names.py):

- `s3/provider_feeds/{provider}_raw`: the file (and its `.sig`) as downloaded from the
  provider's SFTP server, at `raw/{provider}/{date of mtime}/{name}` with size and sha256.
  Raw copies are never overwritten. A rerun whose raw copy exists reuses it without
  contacting the SFTP server (providers delete files): `raw_copy.py`.
- `s3/provider_feeds/{provider}_landed`: the raw copy verified, decrypted, decompressed, and
  each resulting file at `data/{csv|pdf|xml|other}/{folder}/{name}`: `landing.py`.

One step, so the file just downloaded is landed from the same scratch directory: it is passed
within the step's function, never through the process, the event log or S3, whatever executor
or launcher runs the step. The raw copy's materialization is yielded first: a file that fails
to land (a bad signature, a bomb, a missing secret) still has its raw copy recorded, so nothing
is lost and a rerun needs no SFTP server. The scratch directory goes away after every file,
landed or failed, and a dead run's is removed by the next run (`scratch.py`, `cleanup.py`).

The step requires only its own provider's resources, so a provider whose SFTP server or secret
is missing fails its own files and no one else's.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Optional

import dagster as dg

from credflow_assets.common.error_reports import error_report
from credflow_assets.common.parse_logs import logged_events
from credflow_assets.common.run_recovery import mark_transient_failures
from credflow_assets.config import ProviderConfig
from credflow_assets.provider_feeds.cleanup import clean_up_after_dead_runs
from credflow_assets.provider_feeds.failures import FileRef, file_failure, one_file_failure
from credflow_assets.provider_feeds.landing import land_file
from credflow_assets.provider_feeds.metadata import raw_result
from credflow_assets.provider_feeds.names import (
    GROUP,
    job_name,
    landed_asset_key,
    provider_partitions,
    raw_asset_key,
    step_name,
)
from credflow_assets.provider_feeds.raw_copy import (
    StoredRaw,
    latest_raw_copy,
    store_raw_copy,
    wait_for_raw_copy,
)
from credflow_assets.provider_feeds.settings import (
    SETTINGS_KEY,
    ProviderFeed,
    ProviderFeedsSettings,
    provider_feed_resource_key,
    s3_client_of,
)
from credflow_assets.resources.sftp import sftp_resource_key

# Transient SFTP/S3 errors only: every other failure is raised with allow_retries=False.
RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_provider_job(provider: ProviderConfig):
    """One file of `provider` per run: its raw copy, then its landing, in one step."""
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
    raw_key, landed = raw_asset_key(provider.name), landed_asset_key(provider.name)

    @dg.multi_asset(
        name=step_name(provider.name),
        specs=[
            dg.AssetSpec(
                raw_key, group_name=GROUP, kinds={"s3", "sftp"},
                description=f"A file of provider {provider.name} exactly as downloaded, stored "
                f"immutably at raw/{provider.name}/{{date}}/{{name}} with its size and sha256 "
                "(and its .sig beside it).",
            ),
            dg.AssetSpec(
                landed, deps=[raw_key], group_name=GROUP, kinds={"s3", "csv", "pdf"},
                description=f"A file of provider {provider.name}: its raw copy verified, "
                "decrypted and decompressed; every resulting file at "
                f"data/{{csv|pdf|xml|other}}/{provider.folder}/{{name}}.",
            ),
        ],
        partitions_def=provider_partitions(provider.name),
        retry_policy=RETRY_POLICY,
        required_resource_keys={"s3", SETTINGS_KEY, feed_key, sftp_key},
        # Either asset may be materialized alone, as when they were two steps: the raw copy
        # alone keeps a file without landing it; the landing alone lands again from the
        # recorded raw copy (after a fixed secret or a raised limit) and never re-records or
        # re-fetches it. The step does only what is selected (`context.selected_asset_keys`).
        # (It declares the SFTP resource either way; a landing alone never opens a session.)
        can_subset=True,
        description=f"One file of provider {provider.name}: store its raw copy, then land it.",
    )
    def provider_file(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        selected = context.selected_asset_keys
        yield from one_provider_file(context, sftp_key,
                                     raw=raw_key if raw_key in selected else None,
                                     landed=landed if landed in selected else None)

    return [provider_file]


def one_provider_file(context: dg.AssetExecutionContext, sftp_key: str, *,
                      raw: Optional[dg.AssetKey],
                      landed: Optional[dg.AssetKey]) -> Iterator[dg.MaterializeResult]:
    """The step: the raw copy's materialization, then the landing's (each only when its asset
    key is given: selected)."""
    ref = FileRef.from_partition_key(context.partition_key)
    with ExitStack() as scratch:
        with one_file_failure(ref, "store the raw copy" if raw is not None else "land",
                              context.log):
            feed = _feed(context, ref)  # fails at once for a provider not in the config
            settings: ProviderFeedsSettings = getattr(context.resources, SETTINGS_KEY)
            client = s3_client_of(context)
            clean_up_after_dead_runs(context.instance, client, settings.work_dir, context.log)
            # One scratch directory for the whole step: the download is landed from it.
            work = scratch.enter_context(settings.scratch(ref.provider,
                                                          run_id=context.run.run_id))
        stored: Optional[StoredRaw] = None
        if raw is not None:
            with one_file_failure(ref, "store the raw copy", context.log):
                stored = store_raw_copy(context, getattr(context.resources, sftp_key), client,
                                        settings, ref, work, keep_download=landed is not None)
            if stored.pending is None:
                # Recorded before the landing: a file that fails to land keeps its raw copy.
                yield _raw_result(client, stored, raw, ref, context.log)
        if landed is None:
            return
        # The raw copy still uploading: the landing's upload waits for it before its last byte.
        gate = stored.pending.result if stored is not None and stored.pending else None
        landing = logged_events(
            context, _landing(context, feed, settings, client, ref, work, stored, landed, gate),
            flow=GROUP, s3_client=client, bucket=settings.logs_bucket)
        if gate is None:
            yield from landing
            return
        events, failure = [], None
        try:
            for event in landing:
                events.append(event)
        except Exception as error:  # noqa: BLE001 - raised below, after the raw copy's record
            failure = error
        wait_for_raw_copy(context, stored, ref)  # its failure, if any, is the file's
        # Recorded first all the same: a file that fails to land keeps its raw copy.
        yield _raw_result(client, stored, raw, ref, context.log)
        yield from events
        if failure is not None:
            raise failure


def _raw_result(client, stored: StoredRaw, asset_key: dg.AssetKey, ref: FileRef,
                log) -> dg.MaterializeResult:
    with one_file_failure(ref, "store the raw copy", log):
        return raw_result(client, stored.copy, reused=stored.reused, seconds=stored.seconds,
                          asset_key=asset_key)


def _landing(context, feed: ProviderFeed, settings: ProviderFeedsSettings, client, ref: FileRef,
             work, stored: Optional[StoredRaw], asset_key: dg.AssetKey,
             gate: Optional[Callable[[], object]]) -> Iterator[dg.MaterializeResult]:
    """The landing's materialization, from the raw copy this step stored or, when the landing
    is materialized alone, the one an earlier run recorded; `gate` (the raw copy's upload) is
    waited for before the last byte of every landed file. The file's error report (refused
    members, bad CSV rows) is linked from the materialization, or from the failure."""
    with one_file_failure(ref, "land", context.log):
        if stored is None:
            copy, download = latest_raw_copy(context.instance, context.partition_key), None
        else:
            copy, download = stored.copy, stored.download
        refused: Optional[dg.Failure] = None
        # The report is stored when the block ends: what links it is made after.
        with error_report(flow=GROUP, partition=context.partition_key,
                          run_id=context.run.run_id, s3_client=client,
                          bucket=settings.logs_bucket) as errors:
            try:
                result = land_file(context, feed, settings, client, ref, copy, work, download,
                                   asset_key=asset_key, errors=errors, gate=gate)
            except dg.Failure as failure:
                refused = failure
        links = errors.metadata()
        if refused is not None:
            raise dg.Failure(description=refused.description,
                             metadata={**refused.metadata, **links},
                             allow_retries=refused.allow_retries) from None
        yield result._replace(metadata={**(result.metadata or {}), **links})


def _feed(context, ref: FileRef) -> ProviderFeed:
    try:
        return getattr(context.resources, provider_feed_resource_key(ref.provider))
    except Exception:  # noqa: BLE001 - Dagster raises its own error for an unknown resource
        raise file_failure(ref, "find the provider", f"provider {ref.provider!r} is not this "
                           "job's provider, or not in the config; rerun the file from its own "
                           "provider's job", transient=False) from None
