"""Throwaway OpenPGP keys and sender-side helpers for tests and the local stack.

Keys are EdDSA (ed25519) primary keys with a cv25519 encryption subkey, which generate in
tens of milliseconds. A passphrase-protected key is slower because gpg-agent calibrates its
key-protection work factor (~100 ms of hashing per unlock, seconds at generation on a small
machine); `fast_protection=True` lowers it for a throwaway homedir (tests only: it weakens
the at-rest protection of every key the homedir's agent protects afterwards).

Homedirs go through `credflow_assets.resources.gpg.prepare_homedir`, so they get the same
socket-length check and passphrase-cache settings as the resource.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from credflow_assets.resources.gpg import (
    GpgError,
    gpg_messages,
    kill_agent,
    open_gpg,
    prepare_homedir,
)

__all__ = [
    "encrypt_file",
    "export_public_key",
    "generate_key",
    "kill_agent",
    "sign_detached",
]

FAST_S2K_COUNT = 65536  # the minimum gpg-agent accepts


def generate_key(
    homedir: str | os.PathLike,
    name_email: str,
    passphrase: Optional[str] = None,
    *,
    fast_protection: bool = False,
    gpg_binary: str = "gpg",
) -> str:
    """Create an ed25519/cv25519 key pair in `homedir`; return its fingerprint."""
    if fast_protection:
        home = prepare_homedir(homedir, gpg_binary=gpg_binary)
        _set_agent_option(home, "s2k-count", FAST_S2K_COUNT, gpg_binary)
    gpg = open_gpg(homedir, gpg_binary=gpg_binary)
    params = dict(
        key_type="EDDSA",
        key_curve="ed25519",
        key_usage="sign",
        subkey_type="ECDH",
        subkey_curve="cv25519",
        subkey_usage="encrypt",
        name_email=name_email,
        expire_date=0,
    )
    if passphrase:
        params["passphrase"] = passphrase
    else:
        params["no_protection"] = True
    result = gpg.gen_key(gpg.gen_key_input(**params))
    if not result.fingerprint:
        raise GpgError(
            f"GPG key generation for {name_email} in {homedir} failed: "
            f"{result.status or 'no fingerprint'}: {gpg_messages(result.stderr)}"
        )
    return result.fingerprint


def export_public_key(
    homedir: str | os.PathLike, fingerprint: str, *, gpg_binary: str = "gpg"
) -> str:
    """ASCII-armored public key of `fingerprint`."""
    armored = open_gpg(homedir, gpg_binary=gpg_binary).export_keys(fingerprint)
    if not armored:
        raise GpgError(f"GPG export from {homedir}: no public key {fingerprint}")
    return armored


def encrypt_file(
    homedir: str | os.PathLike,
    src_path: str | os.PathLike,
    dest_path: str | os.PathLike,
    recipients: Sequence[str],
    *,
    sign_with: Optional[str] = None,
    passphrase: Optional[str] = None,
    compress: bool = False,
    gpg_binary: str = "gpg",
) -> Path:
    """Encrypt (and optionally sign) a file as a sender would; streams file to file.

    Recipients are trusted as given (`always_trust`): the caller picked the fingerprints.
    Compression is off by default because it dominates encryption time for large files.
    """
    gpg = open_gpg(homedir, gpg_binary=gpg_binary)
    extra = ["--pinentry-mode", "loopback"] + ([] if compress else ["--compress-algo", "none"])
    with open(src_path, "rb") as stream:
        result = gpg.encrypt_file(
            stream,
            list(recipients),
            sign=sign_with or None,
            passphrase=passphrase,
            always_trust=True,
            armor=False,
            output=str(dest_path),
            extra_args=extra,
        )
    if not result.ok:
        Path(dest_path).unlink(missing_ok=True)
        raise GpgError(f"GPG cannot encrypt {src_path} for {list(recipients)}: {result.status}")
    return Path(dest_path)


def sign_detached(
    homedir: str | os.PathLike,
    src_path: str | os.PathLike,
    sig_path: str | os.PathLike,
    fingerprint: str,
    *,
    passphrase: Optional[str] = None,
    gpg_binary: str = "gpg",
) -> Path:
    """Write a binary detached signature of `src_path` by `fingerprint` to `sig_path`."""
    gpg = open_gpg(homedir, gpg_binary=gpg_binary)
    with open(src_path, "rb") as stream:
        result = gpg.sign_file(
            stream,
            keyid=fingerprint,
            passphrase=passphrase,
            detach=True,
            binary=True,
            output=str(sig_path),
            extra_args=["--pinentry-mode", "loopback"],
        )
    if not result.fingerprint:
        Path(sig_path).unlink(missing_ok=True)
        raise GpgError(f"GPG cannot sign {src_path} with {fingerprint}: {result.status}")
    return Path(sig_path)


def _set_agent_option(homedir: Path, key: str, value: object, gpg_binary: str) -> None:
    conf = homedir / "gpg-agent.conf"
    lines = conf.read_text().splitlines() if conf.exists() else []
    if f"{key} {value}" in lines:
        return
    lines = [line for line in lines if line.split(None, 1)[:1] != [key]] + [f"{key} {value}"]
    conf.write_text("\n".join(lines) + "\n")
    kill_agent(homedir, gpg_binary=gpg_binary)  # the agent restarts on next use and rereads it
