"""Where the provider-feeds flow reads and writes, from the config file.

`ProviderFeedsSettings` holds what is common to every provider (the bucket, the scratch
directory, per-tick bounds); one `ProviderFeed` resource per provider holds that provider's
folder, file pattern, signature rules and GPG passphrase (an EnvVar, read when a run needs it).
The SFTP server of a provider is the foundation's `sftp_{provider}` resource.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from credflow_assets.resources.gpg import GpgResource

SETTINGS_KEY = "provider_feeds_settings"
MiB = 1024 * 1024
MAX_PARTS = 9_000  # S3 allows 10,000 parts per upload; keep a margin
WORK_DIR_PREFIX = "credflow-provider-"


def provider_feed_resource_key(provider_name: str) -> str:
    return f"provider_feed_{provider_name}"


class ProviderFeedsSettings(dg.ConfigurableResource):
    bucket: str = Field(description="The provider-data bucket: raw/ and data/.")
    logs_bucket: str = Field(description="Where each landing's parse log goes.")
    work_dir: Optional[str] = Field(
        default=None,
        description="Scratch space for downloads, plaintext and extracted files (removed after "
        "every file); None means the system temp directory. Needs room for one file's "
        "download plus its extracted contents.",
    )
    max_files_per_tick: int = Field(default=50, description="Run requests per sensor tick.")
    settle_seconds: float = Field(
        default=2.0,
        description="A new or changed file is listed twice this far apart; if its size or "
        "mtime changed it is still being written and waits for the next tick.",
    )
    upload_concurrency: int = Field(
        default=2, description="Parts in flight per multipart upload. More is faster on S3 "
        "and moto (each part waits on the server), but 3 and 4 took the landing process past "
        "300 MB of RSS in bench/provider_landing.py (RESULTS.md): each part is held in memory.",
    )
    upload_part_mib: int = Field(
        default=8, ge=5, description="Multipart part size, MiB (S3's minimum is 5), raised "
        "for a file too big for S3's part count. An upload holds about upload_concurrency "
        "parts in memory, plus as many read ahead.",
    )

    def part_size(self, largest_bytes: int) -> int:
        """The part size for a file of at most `largest_bytes`: `upload_part_mib`, or more
        when the file would need more than `MAX_PARTS` parts."""
        needed = math.ceil(max(largest_bytes, 1) / MAX_PARTS / MiB)
        return max(self.upload_part_mib, needed) * MiB

    @contextmanager
    def scratch(self, provider: str) -> Iterator[Path]:
        """A private (0700) directory for one file's work, removed on success and failure."""
        if self.work_dir:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{provider}-", dir=self.work_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


class ProviderFeed(dg.ConfigurableResource):
    """One provider's feed: where its files are and how to verify and decrypt them."""

    name: str
    remote_dir: str = "."
    pattern: str = "*"
    folder: str = Field(description="The provider's folder under data/{type}/.")
    gpg_homedir: str = Field(description="credflow's GnuPG home, holding our secret key(s).")
    gpg_passphrase: Optional[str] = Field(
        default=None, description="Passphrase of the key this provider encrypts to; an EnvVar."
    )
    signing_key_file: Optional[str] = Field(
        default=None, description="The provider's armored public key; `.sig` files verify "
        "against it and no other key."
    )
    require_signature: bool = False
    max_extracted_bytes: int = Field(default=10 * 1024**3, gt=0)

    def gpg(self) -> GpgResource:
        return GpgResource(homedir=self.gpg_homedir, passphrase=self.gpg_passphrase)
