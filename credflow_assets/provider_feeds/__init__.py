"""Provider SFTP feeds → immutable raw copies → verified, decrypted, decompressed files in S3
(source doc 002).

Reads top to bottom:

- names.py: every asset key, step, job, partition set, run tag and S3 key, written once;
- sensors.py: one sensor per provider lists its SFTP directory, one partition per file;
- assets.py: per provider one step per file (a multi-asset) materializing `raw`, the file as
  downloaded, then `landed`, verified, decrypted, decompressed, typed; the downloaded file is
  passed within the step;
- the engine, in the order the step uses it: raw_copy.py (reuse the recorded raw copy, or
  download and store it), raw_file.py (the raw copy on local disk for the landing: this step's
  download re-hashed while gpg works, or a verified fetch from S3), landing.py (verify,
  decrypt, decompress, upload), signatures.py (the `.sig` against the provider's key),
  landed_files.py (one resulting file typed, counted and uploaded), failures.py (one clear
  message per failed file; only transient errors retried), metadata.py (what each
  materialization reports), error_lines.py (the file's error report: refused members, bad
  rows);
- the pure file transforms: unpack.py (safe extraction, type detection), streams.py
  (streaming decompression into uploads), rows.py (CSV record counts), limits.py (how big a
  file may become at every stage of unpacking), memory.py (malloc arenas around uploads);
- settings.py: the resources;
- lineage.py: a file's chain for `credflow lineage` (SFTP path → raw copy → landed files →
  runs, parse log, error report);
- what a killed run leaves: scratch.py, open_uploads.py and cleanup.py make sure it leaves
  nothing behind: no scratch files, no run left "started", no open multipart upload.

Adding a provider is a config entry: its assets, job, partitions, sensor and feed resource
follow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig
    from credflow_assets.provider_feeds.settings import ProviderFeedsSettings

def build_defs(
    config: CredflowConfig, *, settings: Optional[ProviderFeedsSettings] = None
) -> dg.Definitions:
    """The flow's assets, job, sensors and resources for the providers in `config`.

    `settings` overrides the flow-wide defaults (scratch directory, settle time, batch size);
    by default they come from the config (the bucket) and the resource's defaults.
    """
    import dagster as dg

    from credflow_assets.provider_feeds.assets import (
        build_provider_feed_assets,
        build_provider_job,
    )
    from credflow_assets.provider_feeds.sensors import build_provider_sensor
    from credflow_assets.provider_feeds.settings import (
        SETTINGS_KEY,
        ProviderFeed,
        ProviderFeedsSettings,
        provider_feed_resource_key,
    )
    from credflow_assets.config import EnvRef

    resources = {
        SETTINGS_KEY: settings or ProviderFeedsSettings(bucket=config.buckets.provider_data,
                                                        logs_bucket=config.buckets.logs),
    }
    for provider in config.providers:
        # GPG settings from the environment are read by the resource when the landing uses
        # them, so that a missing one fails this provider's files with its own sentence.
        from_env: dict[str, str] = {}

        def lazily(field: str, value):
            if isinstance(value, EnvRef):
                from_env[field] = value.env
                return None
            return value

        resources[provider_feed_resource_key(provider.name)] = ProviderFeed(
            name=provider.name,
            remote_dir=provider.remote_dir,
            pattern=provider.pattern,
            folder=provider.folder,
            gpg_homedir=lazily("gpg_homedir", config.gpg.homedir),
            # The passphrase of the key this provider encrypts to; credflow's own by default.
            gpg_passphrase=lazily("gpg_passphrase",
                                  provider.gpg_passphrase or config.gpg.passphrase),
            signing_key_file=lazily("signing_key_file", provider.signing_key_file),
            from_env=from_env,
            require_signature=provider.require_signature,
            max_extracted_bytes=provider.max_extracted_bytes,
            max_expansion_ratio=provider.max_expansion_ratio,
        )
    from credflow_assets.common.freshness import with_expected_cadence

    return dg.Definitions(
        assets=with_expected_cadence([asset for provider in config.providers
                                      for asset in build_provider_feed_assets(provider)],
                                     quiet_sources(config)),
        jobs=[build_provider_job(provider) for provider in config.providers],
        sensors=[
            *(build_provider_sensor(provider) for provider in config.providers),
        ],
        resources=resources,
    )


def quiet_sources(config: CredflowConfig) -> list:
    """The providers whose config says how often they send (`expect_every`)."""
    from credflow_assets.common.freshness import QuietSource
    from credflow_assets.provider_feeds.names import raw_asset_key

    return [QuietSource(raw_asset_key(p.name), "provider", p.name,
                        f"its SFTP folder {p.remote_dir}", p.expect_every, p.owner)
            for p in config.providers if p.expect_every is not None]
