"""The landing: a raw copy verified, decrypted, decompressed, and every resulting file in S3.

The raw copy is read from this step's download or from S3 (`raw_file.py`); its detached
signature is checked against the provider's key only (`signatures.py`); gpg decrypts it
within the provider's limits; then a single file (plain, or gzip of one file) is decompressed,
counted and uploaded in one pass, never on disk, while an archive is extracted to disk first,
so that an unsafe member refuses the whole archive before anything lands (`unpack.py`,
`streams.py`). Each resulting file goes to `data/{csv|pdf|xml|other}/{folder}/{name}`
(`landed_files.py`). Every failure names the provider, the file and the stage it failed in.
"""

from __future__ import annotations

import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from credflow_assets.common.error_reports import ErrorReport
from credflow_assets.provider_feeds.error_lines import report_bad_rows, report_refusal
from credflow_assets.provider_feeds.failures import FileRef, file_failure, scratch_scrub
from credflow_assets.provider_feeds.landed_files import land_one
from credflow_assets.provider_feeds.limits import (
    ExpansionLimit,
    ExtractionLimitExceeded,
    human_size,
)
from credflow_assets.provider_feeds.metadata import landed_metadata, timed
from credflow_assets.provider_feeds.names import raw_asset_key
from credflow_assets.provider_feeds.open_uploads import RunUploads
from credflow_assets.provider_feeds.raw_file import (
    FROM_DOWNLOAD,
    FROM_S3,
    fetch_copy,
    local_raw_file,
)
from credflow_assets.provider_feeds.settings import (
    MissingVariable,
    ProviderFeed,
    ProviderFeedsSettings,
)
from credflow_assets.provider_feeds.signatures import verify_signature
from credflow_assets.provider_feeds.streams import file_chunks, gunzip_chunks, single_file_name
from credflow_assets.provider_feeds.unpack import (
    UnpackError,
    decrypted_name,
    looks_encrypted,
    unpack,
)
from credflow_assets.resources.gpg import GpgOutputLimitExceeded
from credflow_assets.resources.s3 import s3_uri


def land_file(context, feed: ProviderFeed, settings: ProviderFeedsSettings, client,
              ref: FileRef, copy: Optional[dict[str, Any]], work: Path,
              download: Optional[Path], *, asset_key: dg.AssetKey,
              errors: Optional[ErrorReport] = None) -> dg.MaterializeResult:
    """Land raw copy `copy` (None: none is recorded), from `download` when this step made it;
    the result is `asset_key`'s materialization. Refused members and bad CSV rows go to the
    file's error report `errors` (`error_lines.py`)."""
    try:
        feed.check_variables()  # its passphrase, GnuPG home, signing key: before any work
    except MissingVariable as error:
        raise file_failure(ref, "land", error, transient=False) from None
    if copy is None:
        raise file_failure(ref, "land", "no raw copy is recorded; materialize "
                           f"{raw_asset_key(ref.provider).to_user_string()} for this partition "
                           "first", transient=False)
    result = Landing(context, feed, settings, client, ref, copy, work, errors).run(download)
    return dg.MaterializeResult(asset_key=asset_key, metadata=result)


@dataclass
class Plain:
    """The raw copy once verified and decrypted: the file to decompress and land."""

    path: Path
    name: str
    signer: Optional[str]  # the signature's fingerprint; None: no signature, none required
    encrypted: bool


class Landing:
    """One raw copy through every stage; `stage` names the one a failure happens in."""

    def __init__(self, context, feed: ProviderFeed, settings: ProviderFeedsSettings, client,
                 ref: FileRef, copy: dict[str, Any], work: Path,
                 errors: Optional[ErrorReport] = None):
        self.log, self.feed, self.settings = context.log, feed, settings
        self.errors = errors
        self.client, self.ref, self.copy, self.work = client, ref, copy, work
        self.name = posixpath.basename(ref.remote_path)
        self.raw_uri = s3_uri(copy["bucket"], copy["key"])
        self.limit = ExpansionLimit(feed.max_extracted_bytes, feed.max_expansion_ratio,
                                    copy["size"])
        self.uploads = RunUploads(context.instance, context.run.run_id, settings.bucket)
        self.seconds: dict[str, float] = {}
        self.stage = "fetch the raw copy"

    def run(self, download: Optional[Path]) -> dict[str, Any]:
        """The landing's metadata, once every resulting file is in S3."""
        try:
            plain, source = self._verified_and_decrypted(download)
            # One line for the stages before the upload: each log line is an event-log write.
            self.log.info(
                f"{self.ref}: raw copy {self.raw_uri} ({human_size(self.copy['size'])}) from "
                f"{source}, sha256 verified; signature "
                + (f"verified, signed by {plain.signer}" if plain.signer
                   else "none (not required)")
                + (f"; decrypted to {plain.name} ({human_size(plain.path.stat().st_size)}) in "
                   f"{self.seconds['decrypt']:.1f}s" if plain.encrypted else "; not encrypted"))
            found, single, pending = self._decompressed(plain)
            landed = self._upload(found, single, pending)
        except dg.Failure:
            raise
        except Exception as error:  # noqa: BLE001 - classified in file_failure
            if isinstance(error, (UnpackError, ExtractionLimitExceeded)):
                self.stage = "decompress"  # raised by the decompressor while the upload read it
            if self.errors is not None:
                report_refusal(self.errors, error, self.name)
            raise file_failure(self.ref, self.stage, error, scrub=scratch_scrub(self.work),
                               metadata={"raw_uri": dg.MetadataValue.path(self.raw_uri)},
                               log=self.log) from None
        if not landed:
            self.log.warning(f"{self.ref}: the archive holds no regular files; nothing landed")
        if self.errors is not None:
            report_bad_rows(self.errors, landed)
        return {
            **landed_metadata(self.client, self.ref, self.copy, self.raw_uri, found,
                               plain.encrypted, plain.signer, landed, self.seconds,
                               self.settings),
            "raw_source": source,
            "decompressed_while_uploading": single and found != "none",
        }

    def _verified_and_decrypted(self, download: Optional[Path]) -> tuple[Plain, str]:
        """The raw copy decrypted, and where it came from. This step's download is decrypted
        while its sha256 is checked; if it is not the raw copy after all, the copy is fetched
        from S3 and decrypted again (a failure of the download's is then not the file's)."""
        raw_local = self.work / "raw" / self.name
        with timed(self.seconds, "fetch_raw"):
            local = local_raw_file(download, self.copy)
        if local is None:
            why = ("not downloaded by this step" if download is None
                   else "this step's download is missing or not its size")
            self.log.info(f"{self.ref}: fetching the raw copy from S3 ({why})")
            if download is not None:
                download.unlink(missing_ok=True)
            with timed(self.seconds, "fetch_raw"):
                fetch_copy(self.client, self.settings, self.copy, raw_local)
            return self._decrypted(raw_local), FROM_S3
        failed = None  # (stage, error) of the download, reported only if it is the raw copy
        plain = None
        try:
            plain = self._decrypted(local.path)
        except Exception as error:  # noqa: BLE001 - re-raised below unless a refetch
            failed = (self.stage, error)
        self.stage = "fetch the raw copy"
        with timed(self.seconds, "fetch_raw"):
            verified = local.verified()
        if verified:
            if failed is not None:
                self.stage = failed[0]
                raise failed[1]
            return plain, FROM_DOWNLOAD
        self.log.warning(f"{self.ref}: this step's download is not the recorded raw copy "
                         "(sha256 differs); fetching the raw copy from S3")
        local.path.unlink(missing_ok=True)
        shutil.rmtree(self.work / "plain", ignore_errors=True)
        with timed(self.seconds, "fetch_raw"):
            fetch_copy(self.client, self.settings, self.copy, raw_local)
        return self._decrypted(raw_local), FROM_S3

    def _decrypted(self, raw_local: Path) -> Plain:
        self.stage = "verify the signature"
        with timed(self.seconds, "verify"):
            signer = verify_signature(self.client, self.settings, self.feed, self.ref,
                                      self.copy, raw_local, self.work / "sig")
        self.stage = "decrypt"
        if not looks_encrypted(raw_local, self.name):
            return Plain(raw_local, self.name, signer, encrypted=False)
        plain_name = decrypted_name(self.name)
        with timed(self.seconds, "decrypt"):
            try:
                decrypted = self.feed.gpg().decrypt_file(
                    raw_local, self.work / "plain" / plain_name,
                    max_output_bytes=self.limit.max_bytes)
            except GpgOutputLimitExceeded:
                raise self.limit.exceeded("the decrypted content") from None
        raw_local.unlink()
        return Plain(decrypted.dest_path, plain_name, signer, encrypted=True)

    def _decompressed(self, plain: Plain) -> tuple[str, bool, list]:
        """(the compression found, whether it is one file decompressed while it uploads,
        [(name, its chunks, its extracted file or None)] to upload)."""
        self.stage = "decompress"
        single = single_file_name(plain.path, plain.name)
        if single is not None:
            # One file: decompressed, counted and uploaded in one pass, never on disk.
            found, inner = single
            chunks = (gunzip_chunks(plain.path, plain.name, limit=self.limit)
                      if found == "gzip" else file_chunks(plain.path))
            return found, True, [(inner, chunks, None)]
        with timed(self.seconds, "decompress"):
            found, files = unpack(plain.path, plain.name, self.work / "out", limit=self.limit)
        plain.path.unlink()
        self.log.info(f"{self.ref}: {found}: {len(files)} file(s) extracted in "
                      f"{self.seconds['decompress']:.1f}s")
        return found, False, [(extracted.name, file_chunks(extracted.path), extracted.path)
                              for extracted in files]

    def _upload(self, found: str, single: bool, pending: list) -> list[dict[str, Any]]:
        self.stage = "upload"
        landed = []
        for file_name, chunks, extracted_path in pending:
            entry, produced = land_one(self.client, self.settings, self.feed, self.ref,
                                       self.copy, file_name, chunks, self.seconds,
                                       limit=self.limit, uploads=self.uploads)
            if extracted_path is not None:
                extracted_path.unlink()  # frees the scratch disk as the archive lands
            if single:
                self.seconds["decompress"] = self.seconds.get("decompress", 0.0) + produced
            landed.append(entry)
            self.log.info(
                f"{self.ref}: landed {file_name} at "
                f"{s3_uri(self.settings.bucket, entry['key'])} ({entry['type']}, "
                f"{human_size(entry['size'])}"
                + (f", {entry['rows']:,} row(s)" if entry["rows"] is not None else "") + ")"
                + (f"; {found}, decompressed while uploading in {produced:.1f}s"
                   if single and found != "none" else "")
                + ("; not compressed" if found == "none" else "")
            )
        return landed
