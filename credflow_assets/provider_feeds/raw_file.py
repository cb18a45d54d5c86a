"""The raw copy as a local file for the landing, checked against the sha256 it was stored with.

When the step has just downloaded the file, the landing reads that download: no second
transfer. Its sha256 is computed again in a thread (`LocalRawFile.verified`), so that it
overlaps the signature check and the decryption (gpg processes); the landing waits for it
before anything is uploaded, and on a mismatch fetches the raw copy from S3 and starts over.
Otherwise (a rerun whose raw copy was reused, a landing materialized alone, a version another
run had already stored) the raw copy is fetched from S3 and verified before it is used, so a
reparse never needs the SFTP server.

Both live in the step's scratch directory, which is removed on success and failure alike
(`ProviderFeedsSettings.scratch`), and by the next run if the process is killed (`scratch.py`).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from credflow_assets.provider_feeds.failures import RawCopyDamaged
from credflow_assets.provider_feeds.settings import ProviderFeedsSettings
from credflow_assets.resources.s3 import s3_uri, transfer_config

HASH_CHUNK = 1024 * 1024
FROM_S3 = "S3"
FROM_DOWNLOAD = "this step's download (sha256 checked before upload)"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return _sha256_of(stream)


def _sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LocalRawFile:
    """This step's download of the raw copy, its sha256 being computed again."""

    path: Path
    expected_sha256: str
    digest: Future  # the sha256 of `path`, being computed

    @classmethod
    def check(cls, path: Path, copy: dict[str, Any]) -> LocalRawFile:
        """Start hashing `path` (the download stored as raw copy `copy`) in a thread. The file
        is opened here, so that the landing may remove it (once decrypted) while it is read."""
        stream = open(path, "rb")  # noqa: SIM115 - closed by the thread
        digest: Future = Future()

        def compute() -> None:
            try:
                with stream:
                    digest.set_result(_sha256_of(stream))
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits for it
                digest.set_exception(error)

        threading.Thread(target=compute, name="credflow-raw-sha256", daemon=True).start()
        return cls(path, copy["sha256"], digest)

    def verified(self) -> bool:
        """Whether the file is the recorded raw copy, byte for byte (waits for the hash)."""
        return self.digest.result() == self.expected_sha256


def local_raw_file(download: Optional[Path], copy: dict[str, Any]) -> Optional[LocalRawFile]:
    """This step's download being checked as raw copy `copy`; None when there is none, or
    when it is not that copy's size (the landing then fetches the copy from S3)."""
    if download is None:
        return None
    try:
        if download.stat().st_size != copy["size"]:
            return None
        return LocalRawFile.check(download, copy)
    except OSError:
        return None


def fetch_copy(client, settings: ProviderFeedsSettings, stored: dict[str, Any],
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
