"""Where the provider-feeds flow reads and writes, from the config file.

`ProviderFeedsSettings` holds what is common to every provider (the bucket, the scratch
directory, per-tick bounds); one `ProviderFeed` resource per provider holds that provider's
folder, file pattern, signature rules, unpacking limits and GPG settings. The SFTP server of a
provider is the foundation's `sftp_{provider}` resource.

A provider's GPG settings that come from the environment (`{env: NAME}` in the config: its
passphrase, the GnuPG home, its signing key) are read when its landing uses them, not through
Dagster's `EnvVar`: an unset `EnvVar` fails the run before any of credflow's code runs, with
Dagster's words. Read here, a missing variable fails that provider's files alone, with a
sentence naming the variable and what to do (`MissingVariable`).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from credflow_assets.provider_feeds.scratch import WORK_DIR_PREFIX, make_scratch_dir
from credflow_assets.resources.gpg import GpgConfigError, GpgResource

__all__ = ["WORK_DIR_PREFIX"]  # where it has always been imported from

SETTINGS_KEY = "provider_feeds_settings"
MiB = 1024 * 1024
MAX_PARTS = 9_000  # S3 allows 10,000 parts per upload; keep a margin
DEFAULT_MAX_EXTRACTED_BYTES = 10 * 1024**3
DEFAULT_MAX_EXPANSION_RATIO = 200


def provider_feed_resource_key(provider_name: str) -> str:
    return f"provider_feed_{provider_name}"


def s3_client_of(context) -> Any:
    """The boto3 S3 client of a step's or a sensor's context."""
    # Through `required_resource_keys`, dagster-aws's S3Resource (a resource factory) is
    # the boto3 client itself; as a typed parameter it is the resource with get_client().
    s3 = context.resources.s3
    return s3.get_client() if hasattr(type(s3), "get_client") else s3


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
        default=5, ge=5, description="Multipart part size, MiB (S3's minimum is 5), raised "
        "for a file too big for S3's part count. An upload holds about upload_concurrency "
        "parts in memory, plus as many read ahead; 5 rather than 8 took 18 MB off the "
        "landing's peak RSS and was no slower (RESULTS.md §1, session 8).",
    )

    raw_copy_single_put_mib: int = Field(
        default=256, ge=0, le=4 * 1024, description="A raw copy up to this many MiB is "
        "stored with one PutObject (read from disk as it is sent), a bigger one by multipart "
        "upload (S3 takes up to 5 GiB in one PutObject; 0: always multipart). The raw copy "
        "uploads while the file lands, which sends S3 about 2.7 times its bytes "
        "(decompressed), so one stream keeps up. One request instead of a part per 5 MiB, "
        "and no parts to assemble at the end, took a third off the local S3's CPU for it "
        "(moto shares the cores with the landing: RESULTS.md §1, session 9). A failed "
        "PutObject is sent again whole, so the cap stays moderate.",
    )

    def part_size(self, largest_bytes: int) -> int:
        """The part size for a file of at most `largest_bytes`: `upload_part_mib`, or more
        when the file would need more than `MAX_PARTS` parts."""
        needed = math.ceil(max(largest_bytes, 1) / MAX_PARTS / MiB)
        return max(self.upload_part_mib, needed) * MiB

    @contextmanager
    def scratch(self, provider: str, run_id: Optional[str] = None) -> Iterator[Path]:
        """A private (0700) directory for one file's work, removed on success and failure; it
        names its process and run, so that the next run removes it if this one is killed."""
        path = make_scratch_dir(self.work_dir, provider, run_id=run_id)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


class MissingVariable(Exception):
    """A setting of one provider names an environment variable that is not set."""

    def __init__(self, provider: str, variables: list[str]):
        self.provider, self.variables = provider, variables
        names = " and ".join(", ".join(variables).rsplit(", ", 1))
        plural = "s" if len(variables) > 1 else ""
        verb = "are" if len(variables) > 1 else "is"
        super().__init__(f"provider {provider}: environment variable{plural} {names} {verb} "
                         "not set; its files wait until it is")


class ProviderFeed(dg.ConfigurableResource):
    """One provider's feed: where its files are and how to verify and decrypt them."""

    name: str
    remote_dir: str = "."
    pattern: str = "*"
    folder: str = Field(description="The provider's folder under data/{type}/.")
    gpg_homedir: Optional[str] = Field(
        default=None, description="credflow's GnuPG home, holding our secret key(s)."
    )
    gpg_passphrase: Optional[str] = Field(
        default=None, description="Passphrase of the key this provider encrypts to; in the "
        "config always {env: NAME}, so it arrives through `from_env`."
    )
    signing_key_file: Optional[str] = Field(
        default=None, description="The provider's armored public key; `.sig` files verify "
        "against it and no other key."
    )
    from_env: dict[str, str] = Field(
        default={}, description="Settings read from the environment when the landing uses "
        "them (setting name → variable name), instead of the literal fields above."
    )
    require_signature: bool = False
    max_extracted_bytes: int = Field(
        default=DEFAULT_MAX_EXTRACTED_BYTES, gt=0,
        description="Bytes one file may become at any stage of unpacking: gpg's plaintext, "
        "each decompressed layer, an archive's members together.",
    )
    max_expansion_ratio: float = Field(
        default=DEFAULT_MAX_EXPANSION_RATIO, gt=0,
        description="Times its size as received one file may become at any stage of "
        "unpacking (past the first MiB): a ratio no real roster reaches, and any bomb does.",
    )

    def setting(self, name: str) -> Optional[str]:
        """A GPG setting's value: from the environment when the config says `{env: NAME}`;
        raises `MissingVariable` when that variable is not set."""
        variable = self.from_env.get(name)
        if variable is None:
            return getattr(self, name)
        value = os.environ.get(variable)
        if value is None:
            raise MissingVariable(self.name, [variable])
        return value

    def check_variables(self) -> None:
        """Raise `MissingVariable` naming every variable of this provider that is not set."""
        missing = sorted({variable for variable in self.from_env.values()
                          if os.environ.get(variable) is None})
        if missing:
            raise MissingVariable(self.name, missing)

    def gpg(self) -> GpgResource:
        homedir = self.setting("gpg_homedir")
        if not homedir:
            raise GpgConfigError(f"provider {self.name}: no GnuPG home is configured (gpg.homedir)")
        return GpgResource(homedir=homedir, passphrase=self.setting("gpg_passphrase"))
