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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from credflow_assets.common.error_reports import ErrorReport
from credflow_assets.provider_feeds.decrypt_stream import decrypted_chunks
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
    LocalRawFile,
    fetch_copy,
    local_raw_file,
)
from credflow_assets.provider_feeds.settings import (
    MissingVariable,
    ProviderFeed,
    ProviderFeedsSettings,
)
from credflow_assets.provider_feeds.signatures import verify_signature
from credflow_assets.provider_feeds.streams import (
    file_chunks,
    gunzip_stream,
    single_file_name,
    single_file_of_head,
)
from credflow_assets.provider_feeds.unpack import (
    CHUNK,
    UnpackError,
    decrypted_name,
    looks_encrypted,
    unpack,
)
from credflow_assets.resources.gpg import GpgError, GpgOutputLimitExceeded
from credflow_assets.resources.s3 import s3_uri


def land_file(context, feed: ProviderFeed, settings: ProviderFeedsSettings, client,
              ref: FileRef, copy: Optional[dict[str, Any]], work: Path,
              download: Optional[Path], *, asset_key: dg.AssetKey,
              errors: Optional[ErrorReport] = None,
              gate: Optional[Callable[[], object]] = None) -> dg.MaterializeResult:
    """Land raw copy `copy` (None: none is recorded), from `download` when this step made it;
    the result is `asset_key`'s materialization. Refused members and bad CSV rows go to the
    file's error report `errors` (`error_lines.py`). `gate()` (the raw copy's upload, still
    running) is called before each landed file's last byte is handed to its upload: what it
    raises aborts that upload, so nothing lands before its raw copy is stored."""
    try:
        feed.check_variables()  # its passphrase, GnuPG home, signing key: before any work
    except MissingVariable as error:
        raise file_failure(ref, "land", error, transient=False) from None
    if copy is None:
        raise file_failure(ref, "land", "no raw copy is recorded; materialize "
                           f"{raw_asset_key(ref.provider).to_user_string()} for this partition "
                           "first", transient=False)
    result = Landing(context, feed, settings, client, ref, copy, work, errors,
                     gate).run(download)
    return dg.MaterializeResult(asset_key=asset_key, metadata=result)


@dataclass
class Plain:
    """The raw copy once its signature is verified: the file to decrypt, decompress, land."""

    path: Optional[Path]  # the plaintext on disk; None while it is decrypted as it lands
    name: str
    signer: Optional[str]  # the signature's fingerprint; None: no signature, none required
    encrypted: bool
    chunks: Optional[Iterator[bytes]] = None  # gpg's plaintext, streaming (see decrypt_stream)


class _NotTheRawCopy(Exception):
    """This step's download does not hash to the raw copy's sha256."""


class Landing:
    """One raw copy through every stage; `stage` names the one a failure happens in."""

    def __init__(self, context, feed: ProviderFeed, settings: ProviderFeedsSettings, client,
                 ref: FileRef, copy: dict[str, Any], work: Path,
                 errors: Optional[ErrorReport] = None,
                 gate: Optional[Callable[[], object]] = None):
        self.log, self.feed, self.settings = context.log, feed, settings
        self.errors, self.gate = errors, gate
        self.client, self.ref, self.copy, self.work = client, ref, copy, work
        self.name = posixpath.basename(ref.remote_path)
        self.raw_uri = s3_uri(copy["bucket"], copy["key"])
        self.limit = ExpansionLimit(feed.max_extracted_bytes, feed.max_expansion_ratio,
                                    copy["size"])
        self.uploads = RunUploads(context.instance, context.run.run_id, settings.bucket)
        self.seconds: dict[str, float] = {}
        self.stage = "fetch the raw copy"
        self.check: Optional[LocalRawFile] = None  # this step's download, being hashed

    def run(self, download: Optional[Path]) -> dict[str, Any]:
        """The landing's metadata, once every resulting file is in S3."""
        try:
            plain, source, found, single, landed = self._attempt(download)
        except dg.Failure:
            raise
        except Exception as error:  # noqa: BLE001 - classified in file_failure
            if isinstance(error, (UnpackError, ExtractionLimitExceeded)):
                self.stage = "decompress"  # raised by the decompressor while the upload read it
            elif isinstance(error, GpgError) and self.stage in ("decompress", "upload"):
                self.stage = "decrypt"  # gpg's verdict, told while the upload read its output
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
            "decrypted_while_uploading": single and plain.chunks is not None,
        }

    def _attempt(self, download: Optional[Path]) -> tuple[Plain, str, str, bool, list]:
        """Land from this step's download; if it is not the raw copy after all, fetch the copy
        from S3 and land again (a failure of the download's is then not the file's)."""
        try:
            return self._land(download)
        except Exception:  # noqa: BLE001 - re-raised unless the download is to blame
            check, self.check = self.check, None
            if check is None or check.verified():
                raise
        self.log.warning(f"{self.ref}: this step's download is not the recorded raw copy "
                         "(sha256 differs); fetching the raw copy from S3")
        check.path.unlink(missing_ok=True)
        for directory in ("plain", "out"):
            shutil.rmtree(self.work / directory, ignore_errors=True)
        return self._land(None)

    def _land(self, download: Optional[Path]) -> tuple[Plain, str, str, bool, list]:
        plain, source = self._verified(download)
        gpg_output = plain.chunks
        # One line for the stages before the upload: each log line is an event-log write.
        self.log.info(
            f"{self.ref}: raw copy {self.raw_uri} ({human_size(self.copy['size'])}) from "
            f"{source}; signature "
            + (f"verified, signed by {plain.signer}" if plain.signer else "none (not required)")
            + ("; decrypting while it lands" if plain.encrypted else "; not encrypted"))
        try:
            found, single, pending = self._decompressed(plain)
            landed = self._upload(found, single, pending)
        finally:
            if gpg_output is not None:
                gpg_output.close()  # stops gpg if the upload stopped reading it
        if plain.path is not None:
            plain.path.unlink(missing_ok=True)
        return plain, source, found, single, landed

    def _verified(self, download: Optional[Path]) -> tuple[Plain, str]:
        """The raw copy with its signature verified, and where it came from. This step's
        download is hashed meanwhile, and checked before any landed file completes (`_gate`)."""
        raw_local = self.work / "raw" / self.name
        with timed(self.seconds, "fetch_raw"):
            self.check = local_raw_file(download, self.copy)
        if self.check is None:
            why = ("not downloaded by this step" if download is None
                   else "this step's download is missing or not its size")
            self.log.info(f"{self.ref}: fetching the raw copy from S3 ({why})")
            if download is not None:
                download.unlink(missing_ok=True)
            with timed(self.seconds, "fetch_raw"):
                fetch_copy(self.client, self.settings, self.copy, raw_local)
            return self._signed(raw_local), FROM_S3
        return self._signed(self.check.path), FROM_DOWNLOAD

    def _signed(self, raw_local: Path) -> Plain:
        self.stage = "verify the signature"
        with timed(self.seconds, "verify"):
            signer = verify_signature(self.client, self.settings, self.feed, self.ref,
                                      self.copy, raw_local, self.work / "sig")
        self.stage = "decrypt"
        if not looks_encrypted(raw_local, self.name):
            return Plain(raw_local, self.name, signer, encrypted=False)
        chunks = decrypted_chunks(self.feed.gpg(), raw_local, seconds=self.seconds,
                                  max_output_bytes=self.limit.max_bytes)
        return Plain(None, decrypted_name(self.name), signer, encrypted=True,
                     chunks=self._limited(chunks))

    def _limited(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except GpgOutputLimitExceeded:
            raise self.limit.exceeded("the decrypted content") from None

    def _decompressed(self, plain: Plain) -> tuple[str, bool, list]:
        """(the compression found, whether it is one file decompressed while it uploads,
        [(name, its chunks, its extracted file or None)] to upload)."""
        self.stage = "decompress"
        if plain.chunks is not None:
            self.stage = "decrypt"
            first = next(plain.chunks, b"")  # gpg's errors at the start (key, passphrase)
            self.stage = "decompress"
            plain.chunks = _prepended(first, plain.chunks)
            single = single_file_of_head(first, plain.name, lambda: gunzip_stream(
                iter([first]), plain.name, limit=ExpansionLimit(CHUNK)))
            if single is None:  # an archive: on disk first, so a bad member refuses it all
                self.stage = "decrypt"
                plain.path = self.work / "plain" / plain.name
                with timed(self.seconds, "decrypt"):
                    _write(plain.chunks, plain.path)
                self.stage = "decompress"
        else:
            single = single_file_name(plain.path, plain.name)
        if single is not None:
            # One file: decompressed, counted and uploaded in one pass, never on disk.
            found, inner = single
            source = plain.chunks if plain.path is None else file_chunks(plain.path)
            chunks = (gunzip_stream(source, plain.name, limit=self.limit)
                      if found == "gzip" else source)
            return found, True, [(inner, chunks, None)]
        with timed(self.seconds, "decompress"):
            found, files = unpack(plain.path, plain.name, self.work / "out", limit=self.limit)
        if found != "none":
            plain.path.unlink()  # extracted: frees the scratch disk before the members land
        self.log.info(f"{self.ref}: {found}: {len(files)} file(s) extracted in "
                      f"{self.seconds['decompress']:.1f}s")
        return found, False, [(extracted.name, file_chunks(extracted.path), extracted.path)
                              for extracted in files]

    def _gate(self) -> None:
        """Before any landed file completes: this step's download is the raw copy, and the
        raw copy is stored (its upload may still run: `gate`)."""
        if self.check is not None and not self.check.verified():
            raise _NotTheRawCopy()
        if self.gate is not None:
            self.gate()

    def _upload(self, found: str, single: bool, pending: list) -> list[dict[str, Any]]:
        self.stage = "upload"
        landed = []
        for file_name, chunks, extracted_path in pending:
            chunks = _gated(chunks, self._gate)
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


def _gated(chunks: Iterator[bytes], gate: Callable[[], object]) -> Iterator[bytes]:
    """`chunks`, then `gate()` before the end is told (it raises to refuse them): the upload
    reading them cannot complete before it returns."""
    yield from chunks
    gate()


def _prepended(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """`first`, then `rest`; closing this closes `rest` (the gpg it reads is stopped)."""
    if first:
        yield first
    yield from rest


def _write(chunks: Iterator[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
