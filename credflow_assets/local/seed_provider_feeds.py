"""Demo files for the provider-feeds flow, dropped on the local SFTP server as a provider would.

The demo provider (`acme_health`) has a signing key of its own: generated once in a short
throwaway GPG homedir, its public half written to `home/provider-keys/acme_health.asc` (what
`CREDFLOW_ACME_HEALTH_SIGNING_KEY` points at) and its private half kept under
`home/demo-provider/` so a later seed signs with the same key. Files are encrypted to
credflow's own local key (found in `$CREDFLOW_GPG_HOME`), without compression, as
`--compress-algo none` keeps large files fast.

Good files (always): a signed and encrypted `.csv.gz`, an encrypted `.tar.gz` with three
files, an encrypted PDF and an unencrypted XML. With `include_failures=True`, one file per
failure the flow must report (not encrypted for us, corrupt ciphertext, truncated gzip, bad
signature, a tar escaping with `../`, a tar with a link, a decompression bomb when the
provider's limit is small enough to make one cheaply) and a stray `.sig` without its file.

Idempotent: a file already in the outbox is left alone (rewriting it would change its mtime
and make it a new version); files are written under a dot-name and renamed into place, so the
sensor never sees half a file.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from credflow_assets.config import CredflowConfig
from credflow_assets.local.drive_server.convert import export_pdf
from credflow_assets.local.gpg_keys import (
    encrypt_file,
    export_public_key,
    generate_key,
    kill_agent,
    sign_detached,
)
from credflow_assets.resources.gpg import GpgError, open_gpg

DEMO_PROVIDER = "acme_health"
DEMO_PROVIDER_IDENTITY = "feeds@acme-health.example"
OTHER_IDENTITY = "someone-else@other-recipient.example"
CREDFLOW_IDENTITY = "credflow-local@localhost"
# A bomb is only seeded when it can trip the provider's limit cheaply.
MAX_BOMB_BYTES = 256 * 1024 * 1024

MEMBERS_FILE = "members_2024-06-03.csv.gz.gpg"
MEMBERS_ROWS = 250
BUNDLE_FILE = "credentials_2024-06-03.tar.gz.gpg"
BUNDLE_MEMBERS = ("licenses.csv", "attestation.pdf", "notes.txt")
LICENSES_ROWS = 40
PDF_FILE = "license_scan_1001.pdf.gpg"
XML_FILE = "roster_2024-06-03.xml"
GOOD_FILES = (MEMBERS_FILE, BUNDLE_FILE, PDF_FILE, XML_FILE)

NOT_FOR_US_FILE = "not_for_us.csv.gpg"
CORRUPT_FILE = "corrupt.csv.gpg"
TRUNCATED_FILE = "truncated.csv.gz.gpg"
TAMPERED_FILE = "tampered.csv.gpg"
ESCAPE_FILE = "escape.tar.gz.gpg"
LINK_FILE = "link.tar.gz.gpg"
BOMB_FILE = "bomb.csv.gz.gpg"
STRAY_SIGNATURE = "stray.csv.gpg.sig"


@dataclass(frozen=True)
class DemoProviderKeys:
    homedir: Path  # the provider's throwaway GPG homedir (only inside `demo_provider_gpg`)
    fingerprint: str  # the provider's signing key
    credflow_fingerprint: str  # credflow's key, the files' recipient
    other_fingerprint: str  # a key that is not ours
    public_key_file: Path
    created: bool  # the signing key was made by this call


def seed_provider_feeds(
    config: CredflowConfig, sftp_root: Path, home: Path, *, include_failures: bool = False
) -> list[str]:
    """Drop the demo provider's files into `sftp_root/<remote_dir>/`; a line per file."""
    provider = next((p for p in config.providers if p.name == DEMO_PROVIDER), None)
    if provider is None:
        return [f"provider feeds: no provider {DEMO_PROVIDER!r} in the config; nothing seeded"]
    outbox = Path(sftp_root) / provider.remote_dir
    outbox.mkdir(parents=True, exist_ok=True)
    lines = []
    with demo_provider_gpg(Path(home)) as keys:
        lines.append(
            f"provider feeds: {DEMO_PROVIDER}'s signing key {keys.fingerprint[-16:]} "
            f"({'created' if keys.created else 'kept'}), public key in {keys.public_key_file}"
        )
        demos = list(_good_files())
        if include_failures:
            demos += _failure_files(provider.max_extracted_bytes)
        for name, description, build in demos:
            target = outbox / name
            signature = outbox / (name + ".sig")
            signed = name in (MEMBERS_FILE, TAMPERED_FILE)
            if target.exists() and (not signed or (signature.exists() and not keys.created)):
                lines.append(f"  {name}: already there")
                continue
            with tempfile.TemporaryDirectory(prefix="cf-seed-") as scratch:
                build(keys, Path(scratch), outbox, target)
            lines.append(f"  {name}{' (+ .sig)' if signed else ''}: {description}")
    return lines


@contextmanager
def demo_provider_gpg(home: Path) -> Iterator[DemoProviderKeys]:
    """The demo provider's GPG side: its signing key, credflow's public key, another key.

    The homedir is short (`/tmp/cf-prov-…`: gpg-agent's socket path must fit in 108 bytes)
    and goes away with its agent on exit.
    """
    public = home / "provider-keys" / f"{DEMO_PROVIDER}.asc"
    secret = home / "demo-provider" / f"{DEMO_PROVIDER}.secret.asc"
    homedir = Path(tempfile.mkdtemp(dir="/tmp", prefix="cf-prov-"))
    try:
        gpg = open_gpg(homedir)
        created = False
        if public.exists() and secret.exists():
            fingerprint = _import(gpg, secret.read_text(), "the demo provider's key")
        else:
            fingerprint = generate_key(homedir, DEMO_PROVIDER_IDENTITY)
            secret.parent.mkdir(parents=True, exist_ok=True)
            armored = gpg.export_keys(fingerprint, secret=True, expect_passphrase=False)
            secret.write_text(armored)
            secret.chmod(0o600)
            public.parent.mkdir(parents=True, exist_ok=True)
            public.write_text(export_public_key(homedir, fingerprint))
            created = True
        credflow_home = os.environ["CREDFLOW_GPG_HOME"]
        credflow_fingerprint = _credflow_fingerprint(credflow_home)
        _import(gpg, export_public_key(credflow_home, credflow_fingerprint), "credflow's key")
        other = generate_key(homedir, OTHER_IDENTITY)
        yield DemoProviderKeys(homedir, fingerprint, credflow_fingerprint, other, public, created)
    finally:
        kill_agent(homedir)
        shutil.rmtree(homedir, ignore_errors=True)


def _credflow_fingerprint(credflow_home: str) -> str:
    keys = open_gpg(credflow_home).list_keys(secret=True)
    if not keys:
        raise GpgError(f"no secret key in {credflow_home}: run `credflow local up` first")
    for key in keys:
        if any(CREDFLOW_IDENTITY in uid for uid in key.get("uids", [])):
            return key["fingerprint"]
    return keys[0]["fingerprint"]


def _import(gpg, armored: str, what: str) -> str:
    result = gpg.import_keys(armored)
    fingerprints = [f for f in result.fingerprints if f]
    if not fingerprints:
        raise GpgError(f"could not import {what}")
    return fingerprints[0]


# ------------------------------------------------------------------------------ the files

Builder = Callable[[DemoProviderKeys, Path, Path, Path], None]


def _good_files() -> list[tuple[str, str, Builder]]:
    return [
        (MEMBERS_FILE, f"gzip CSV ({MEMBERS_ROWS} rows), encrypted to credflow, signed by "
         "the provider", _members),
        (BUNDLE_FILE, f"tar.gz of {', '.join(BUNDLE_MEMBERS)}, encrypted", _bundle),
        (PDF_FILE, "a PDF, encrypted", _pdf),
        (XML_FILE, "an XML roster, not encrypted", _xml),
    ]


def _failure_files(max_extracted_bytes: int) -> list[tuple[str, str, Builder]]:
    files = [
        (NOT_FOR_US_FILE, "fails: encrypted for someone else's key", _not_for_us),
        (CORRUPT_FILE, "fails: ciphertext damaged in transit", _corrupt),
        (TRUNCATED_FILE, "fails: gzip cut short before encryption", _truncated),
        (TAMPERED_FILE, "fails: signature does not match the file", _tampered),
        (ESCAPE_FILE, "fails: tar member ../escape.csv", _escape),
        (LINK_FILE, "fails: tar member is a symbolic link", _link),
        (STRAY_SIGNATURE, "ignored: a signature without its file", _stray_signature),
    ]
    if max_extracted_bytes < MAX_BOMB_BYTES:
        size = max_extracted_bytes + 1024 * 1024
        files.append((BOMB_FILE, f"fails: gzip of {size:,} zero bytes, past the provider's "
                      f"{max_extracted_bytes:,}-byte limit", _bomb(size)))
    return files


def members_csv(rows: int = MEMBERS_ROWS, prefix: str = "m") -> bytes:
    """A provider roster; one note holds a comma and one a line break (quoted, one row each)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["member_id", "first_name", "last_name", "npi", "license_state", "notes"])
    for index in range(rows):
        note = ("Suite 5, Floor 2" if index == 1 else "moved\nnew address on file" if index == 2
                else "")
        writer.writerow([f"{prefix}-{index:05d}", f"First{index}", f"Last{index}",
                         f"{1000000000 + index}", ("NY", "CA", "TX")[index % 3], note])
    return out.getvalue().encode()


def minimal_pdf(text: str) -> bytes:
    """A small valid one-page PDF holding `text` (the local Drive server's PDF export)."""
    return export_pdf(text)


def roster_xml() -> bytes:
    rows = "".join(f'  <provider id="p-{i:03d}" npi="{2000000000 + i}" state="NY"/>\n'
                   for i in range(12))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<roster source="acme_health">\n'
            f"{rows}</roster>\n").encode()


def tar_gz(members: list[tuple[str, bytes]], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1717400000
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1717400000
            tar.addfile(info)
    return buffer.getvalue()


def _place(scratch_file: Path, target: Path) -> None:
    """Move into the outbox under a dot-name first, then rename: never half a file in view."""
    hidden = target.with_name(f".{target.name}.seeding")
    shutil.copyfile(scratch_file, hidden)
    os.replace(hidden, target)


def _encrypt_to(keys: DemoProviderKeys, scratch: Path, data: bytes, target: Path,
                recipient: str | None = None) -> Path:
    plain = scratch / "plain"
    plain.write_bytes(data)
    encrypted = scratch / target.name
    encrypt_file(keys.homedir, plain, encrypted, [recipient or keys.credflow_fingerprint])
    return encrypted


def _sign_into(keys: DemoProviderKeys, scratch: Path, signed_file: Path, target: Path) -> None:
    signature = scratch / (target.name + ".sig")
    sign_detached(keys.homedir, signed_file, signature, keys.fingerprint)
    _place(signature, target.with_name(target.name + ".sig"))


def _members(keys, scratch, outbox, target) -> None:
    if target.exists():  # re-sign the existing file (the signing key is new)
        _sign_into(keys, scratch, target, target)
        return
    encrypted = _encrypt_to(keys, scratch, gzip.compress(members_csv(), mtime=0), target)
    _place(encrypted, target)
    _sign_into(keys, scratch, encrypted, target)


def _bundle(keys, scratch, outbox, target) -> None:
    licenses = members_csv(LICENSES_ROWS, prefix="lic")
    archive = tar_gz([("licenses.csv", licenses),
                      ("attestation.pdf", minimal_pdf("Attestation of acme_health")),
                      ("notes.txt", b"Bundle of 2024-06-03: licenses and attestation.\n")])
    _place(_encrypt_to(keys, scratch, archive, target), target)


def _pdf(keys, scratch, outbox, target) -> None:
    _place(_encrypt_to(keys, scratch, minimal_pdf("License scan, therapist 1001"), target), target)


def _xml(keys, scratch, outbox, target) -> None:
    plain = scratch / target.name
    plain.write_bytes(roster_xml())
    _place(plain, target)


def _not_for_us(keys, scratch, outbox, target) -> None:
    _place(_encrypt_to(keys, scratch, members_csv(5), target, keys.other_fingerprint), target)


def _corrupt(keys, scratch, outbox, target) -> None:
    encrypted = _encrypt_to(keys, scratch, members_csv(400), target)
    data = bytearray(encrypted.read_bytes())
    data[len(data) - 200] ^= 0xFF  # one byte flipped inside the encrypted data
    encrypted.write_bytes(bytes(data))
    _place(encrypted, target)


def _truncated(keys, scratch, outbox, target) -> None:
    compressed = gzip.compress(members_csv(400), mtime=0)
    _place(_encrypt_to(keys, scratch, compressed[: len(compressed) // 2], target), target)


def _tampered(keys, scratch, outbox, target) -> None:
    if not target.exists():
        _place(_encrypt_to(keys, scratch, members_csv(5), target), target)
    # The provider's own key signed other bytes: the file changed after it was signed.
    signed = bytearray(target.read_bytes())
    signed[-1] ^= 0x01
    original = scratch / "signed-original"
    original.write_bytes(bytes(signed))
    _sign_into(keys, scratch, original, target)


def _escape(keys, scratch, outbox, target) -> None:
    archive = tar_gz([("ok.csv", members_csv(3)), ("../escape.csv", b"escaped,row\n1,2\n")])
    _place(_encrypt_to(keys, scratch, archive, target), target)


def _link(keys, scratch, outbox, target) -> None:
    archive = tar_gz([("ok.csv", members_csv(3))], links={"passwd.csv": "/etc/passwd"})
    _place(_encrypt_to(keys, scratch, archive, target), target)


def _stray_signature(keys, scratch, outbox, target) -> None:
    data = scratch / "stray"
    data.write_bytes(b"a file the provider never uploaded")
    signature = scratch / "stray.sig"
    sign_detached(keys.homedir, data, signature, keys.fingerprint)
    _place(signature, target)


def _bomb(size: int) -> Builder:
    def build(keys, scratch, outbox, target) -> None:
        compressed = scratch / "bomb.gz"
        zeros = bytes(1024 * 1024)
        with gzip.open(compressed, "wb", compresslevel=9) as out:
            for _ in range(size // len(zeros)):
                out.write(zeros)
            out.write(bytes(size % len(zeros)))
        encrypted = scratch / target.name
        encrypt_file(keys.homedir, compressed, encrypted, [keys.credflow_fingerprint])
        _place(encrypted, target)

    return build
