"""The flow's names, written here only: asset keys, jobs, partition sets, partition keys, run
keys and tags, raw and landed S3 keys, and a remote file's identity.

Each provider has its own assets, job and partition set, so a run needs only its own
provider's resources (and secrets), and no asset lists another provider's files as missing:

    provider_partitions(P)   provider_{P}_files: one partition per file P dropped
    raw_asset_key(P)         s3/provider_feeds/{P}_raw: the file as downloaded
    landed_asset_key(P)      s3/provider_feeds/{P}_landed: verified, decrypted, decompressed
    step_name(P)             provider_feed_{P}_file: the one step (a multi-asset) that
                             materializes the two for one file
    job_name(P)              provider_feed_{P}_job: that step, for one file of P per run
    sensor_name(P)           provider_feed_{P}_sensor: lists P's SFTP directory

A partition is one file a provider dropped: `{provider}/{remote path}`. Dagster refuses `...`
and control characters in keys and commas break UI backfills, so the path part is
percent-encoded for exactly those (and for `%` itself), which keeps ordinary paths readable and
makes the key reversible: `parse_partition_key` gives back the provider and the exact path.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from typing import Optional
from urllib.parse import unquote

import dagster as dg

from credflow_assets.common.partitions import is_valid_partition_key
from credflow_assets.common.flow import Flow, FlowPartitions, FlowRuns, first_segment

GROUP = "provider_feeds"
_ASSET_PREFIX = ("s3", "provider_feeds")
_RAW_SUFFIX, _LANDED_SUFFIX = "_raw", "_landed"
_JOB_PREFIX, _JOB_SUFFIX = "provider_feed_", "_job"


@cache
def provider_partitions(provider: str) -> dg.DynamicPartitionsDefinition:
    """One partition per file `provider` dropped, keyed by `partition_key`."""
    return dg.DynamicPartitionsDefinition(name=f"provider_{provider}_files")


def raw_asset_key(provider: str) -> dg.AssetKey:
    return dg.AssetKey([*_ASSET_PREFIX, f"{provider}{_RAW_SUFFIX}"])


def landed_asset_key(provider: str) -> dg.AssetKey:
    return dg.AssetKey([*_ASSET_PREFIX, f"{provider}{_LANDED_SUFFIX}"])


def step_name(provider: str) -> str:
    return f"provider_feed_{provider}_file"


def job_name(provider: str) -> str:
    return f"{_JOB_PREFIX}{provider}{_JOB_SUFFIX}"


def sensor_name(provider: str) -> str:
    return f"provider_feed_{provider}_sensor"


def provider_of_run(job: str, asset_keys: list[dg.AssetKey]) -> Optional[str]:
    """The provider a run of the flow is for, from its job or its assets' keys."""
    if job.startswith(_JOB_PREFIX) and job.endswith(_JOB_SUFFIX):
        return job[len(_JOB_PREFIX):-len(_JOB_SUFFIX)] or None
    for key in asset_keys:
        if tuple(key.path[:-1]) == _ASSET_PREFIX:
            for suffix in (_RAW_SUFFIX, _LANDED_SUFFIX):
                if key.path[-1].endswith(suffix):
                    return key.path[-1][:-len(suffix)]
    return None


SIGNATURE_SUFFIX = ".sig"
# Run tags carrying what the sensor saw, so a run downloads the version it was asked for.
PROVIDER_TAG = "credflow/provider"
REMOTE_PATH_TAG = "credflow/remote_path"
REMOTE_SIZE_TAG = "credflow/remote_size"
REMOTE_MTIME_TAG = "credflow/remote_mtime"
SIGNATURE_TAG = "credflow/remote_signature"  # "{size}:{mtime}" of `X.sig`, or "none"

_TRIPLE_DOT = re.compile(r"\.(?=\.\.)")


def encode_path(path: str) -> str:
    out = []
    for char in path:
        if char in "%," or not char.isprintable():
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return _TRIPLE_DOT.sub("%2E", "".join(out))


def partition_key(provider: str, remote_path: str) -> str:
    key = f"{provider}/{encode_path(remote_path)}"
    if not is_valid_partition_key(key):  # cannot happen for a non-empty path; keep it loud
        raise ValueError(f"cannot build a partition key for {provider}:{remote_path!r}")
    return key


def parse_partition_key(key: str) -> tuple[str, str]:
    """`{provider}/{encoded path}` → (provider, remote path)."""
    provider, slash, encoded = key.partition("/")
    if not slash or not provider or not encoded:
        raise ValueError(f"partition key {key!r} is not {{provider}}/{{remote path}}")
    return provider, unquote(encoded, errors="strict")


@dataclass(frozen=True)
class RemoteIdentity:
    """What identifies one version of a remote file: size and mtime, plus its `.sig`'s."""

    size: int
    mtime: int
    signature: Optional[tuple[int, int]] = None  # (size, mtime) of `X.sig` when present

    def to_json(self) -> list[int]:
        return [self.size, self.mtime, *(self.signature or ())]

    @classmethod
    def from_json(cls, value: list[int]) -> RemoteIdentity:
        size, mtime, *signature = value
        return cls(int(size), int(mtime), tuple(signature) if signature else None)

    def run_key(self, key: str) -> str:
        run_key = f"{key}@{self.size}:{self.mtime}"
        if self.signature:
            run_key += f"+sig@{self.signature[0]}:{self.signature[1]}"
        return run_key

    def tags(self) -> dict[str, str]:
        return {
            REMOTE_SIZE_TAG: str(self.size),
            REMOTE_MTIME_TAG: str(self.mtime),
            SIGNATURE_TAG: f"{self.signature[0]}:{self.signature[1]}" if self.signature else "none",
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Optional[RemoteIdentity]:
        """The identity a sensor asked for; None for a run started by hand."""
        if REMOTE_SIZE_TAG not in tags or REMOTE_MTIME_TAG not in tags:
            return None
        signature = tags.get(SIGNATURE_TAG, "none")
        sig = None
        if signature != "none":
            sig_size, _, sig_mtime = signature.partition(":")
            sig = (int(sig_size), int(sig_mtime))
        return cls(int(tags[REMOTE_SIZE_TAG]), int(tags[REMOTE_MTIME_TAG]), sig)


def mtime_date(mtime: int) -> str:
    return datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%d")


def raw_keys(provider: str, remote_path: str, size: int, mtime: int) -> tuple[str, str]:
    """(primary, alternate) S3 keys for the raw copy of one version of a remote file.

    The primary key is `raw/{provider}/{date of mtime}/{name}`. Raw copies are never
    overwritten: a different version with the same name and date goes to the alternate key,
    which carries its mtime and size and so is unique to it.
    """
    name = posixpath.basename(remote_path)
    date = mtime_date(mtime)
    return (f"raw/{provider}/{date}/{name}",
            f"raw/{provider}/{date}/v{mtime}-{size}/{name}")


def signature_keys(data_key: str, size: int, mtime: int) -> tuple[str, str]:
    """The `.sig` beside its file's raw copy (alternate: a newer signature of the same file)."""
    directory, name = posixpath.split(data_key)
    return (f"{data_key}{SIGNATURE_SUFFIX}",
            f"{directory}/sig-v{mtime}-{size}/{name}{SIGNATURE_SUFFIX}")


def landed_key(category: str, folder: str, name: str) -> str:
    return f"data/{category}/{folder}/{name}"


def _run_tags(key: str, job: str, asset_keys: list[dg.AssetKey]) -> dict[str, str]:
    provider, remote_path = parse_partition_key(key)
    expected = provider_of_run(job, asset_keys)
    if expected is not None and expected != provider:
        raise ValueError(f"partition {key!r} is not a file of provider {expected}")
    return {PROVIDER_TAG: provider, REMOTE_PATH_TAG: remote_path}


# Every run of the flow carries its provider and file, whatever launched it (common/flow.py).
FLOW_RUNS = FlowRuns(
    job_names=lambda name: name.startswith(_JOB_PREFIX) and name.endswith(_JOB_SUFFIX),
    asset_key_prefixes=(_ASSET_PREFIX,),
    tags=_run_tags,
)

# A provider's files can land on the same keys, so a reparse reruns them in the order they came.
FLOW = Flow(
    name="provider_feeds",
    label="provider feed",
    runs=FLOW_RUNS,
    partitions=FlowPartitions(
        name_option="provider",
        names=lambda config: [provider.name for provider in config.providers],
        partitions_of=lambda provider: provider_partitions(provider).name,
        asset_of=raw_asset_key,
        name_of=first_segment,
        job_for=job_name,
        lane_of=first_segment,
    ),
)
