"""GnuPG: streaming decryption, detached-signature verification and key import.

    gpg = GpgResource(homedir=EnvVar("GNUPG_HOME"), passphrase=EnvVar("GPG_PASSPHRASE"))
    result = gpg.decrypt_file(encrypted_path, plain_path)
    signer = gpg.verify_detached(sig_path, data_path)

Decryption streams file to file: gpg reads the encrypted file itself (its path is gpg's
operand; python-gnupg's stdin carries only the passphrase) and writes `--output`, so no
data passes through Python. The plaintext goes to a temporary file next to `dest_path` and
is renamed into place only when gpg reports success: on failure gpg leaves partial, or with
a failed integrity check even complete but manipulated, plaintext behind, and that must
never look like a result.

The gpg-agent passphrase cache trap: the agent caches a secret key's passphrase after a
successful decrypt (default 10 minutes) and then ignores the passphrase credflow passes, so a
wrong passphrase "works" until the cache expires. `--no-symkey-cache` does not help (it only
covers symmetric encryption). The fix is at the agent: this resource writes
`default-cache-ttl 0` and `max-cache-ttl 0` into `<homedir>/gpg-agent.conf` (other lines are
kept) and reloads the agent when it changes that file, so every operation checks the
configured passphrase. We always send the passphrase (loopback pinentry), so caching gains
nothing.

Failures are `GpgError` subclasses whose messages name the file and the cause and never
contain the passphrase. python-gnupg is imported on first use.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    import gnupg

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
LONGEST_SOCKET_NAME = "S.gpg-agent.browser"
AGENT_CONF_SETTINGS = {"default-cache-ttl": "0", "max-cache-ttl": "0"}
GPG_ERR_BAD_PASSPHRASE = 11
DECRYPT_ARGS = ["--pinentry-mode", "loopback", "--no-symkey-cache"]


class GpgError(Exception):
    """A GnuPG operation failed; the message names the file and the cause."""


class GpgConfigError(GpgError):
    """gpg is missing, or the homedir is unusable (e.g. too long for the agent socket)."""


class GpgBadPassphrase(GpgError):
    """The secret key's passphrase is wrong, or none is configured for a protected key."""


class GpgNoSecretKey(GpgError):
    """The file is encrypted for keys whose secret part this homedir does not hold."""


class GpgCorruptInput(GpgError):
    """The input is not OpenPGP data, or it is truncated or fails its integrity check."""


class GpgBadSignature(GpgError):
    """A signature does not verify: bad, made by an unknown or unallowed key, or not a signature."""


@dataclass(frozen=True)
class DecryptResult:
    src_path: Path
    dest_path: Path
    size: int  # plaintext bytes written
    recipient_key_ids: tuple[str, ...]  # long key ids the message was encrypted to
    signer_fingerprint: Optional[str]  # set when the message was also signed and it verified
    seconds: float


class GpgResource(dg.ConfigurableResource):
    """A GnuPG homedir holding our secret key and the senders' public keys."""

    homedir: str = Field(description="GnuPG home; keep it short (agent socket <= 107 bytes).")
    passphrase: Optional[str] = Field(
        default=None, description="Passphrase of our secret key; pass an EnvVar."
    )
    gpg_binary: str = "gpg"

    _gpg: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client()  # fail fast on a bad homedir or a missing gpg, before any work

    def decrypt_file(
        self, src_path: str | os.PathLike, dest_path: str | os.PathLike
    ) -> DecryptResult:
        """Decrypt `src_path` into `dest_path`, streaming; raise a GpgError subclass on failure."""
        src, dest = Path(src_path), Path(dest_path)
        if not src.is_file():
            raise GpgError(f"GPG cannot decrypt {src}: no such file")
        gpg = self._client()
        passphrase = self.passphrase or None  # "" would make gpg read the passphrase from the data
        if passphrase is not None and not gpg.is_valid_passphrase(passphrase):
            raise GpgBadPassphrase(
                f"GPG cannot decrypt {src}: the configured passphrase contains a line break "
                "or other control character, which gpg cannot receive"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        os.close(fd)
        started = time.monotonic()
        try:
            # gpg reads the file itself (the path is its operand) and python-gnupg's stdin
            # carries only the passphrase. Piping the data through stdin instead loses the
            # whole result to a BrokenPipeError whenever gpg stops early (no passphrase, no
            # key), which is exactly when the status lines are needed.
            try:
                result = gpg.decrypt_file(
                    io.BytesIO(b""),
                    passphrase=passphrase,
                    output=partial,
                    extra_args=[*DECRYPT_ARGS, "--", str(src.absolute())],
                )
            except BrokenPipeError as exc:
                raise GpgError(
                    f"GPG cannot decrypt {src}: gpg exited before reading the passphrase"
                ) from exc
            if not result.ok:
                raise self._decrypt_error(src, result, passphrase_configured=passphrase is not None)
            os.replace(partial, dest)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        statuses = _status_lines(result.stderr)
        return DecryptResult(
            src_path=src,
            dest_path=dest,
            size=dest.stat().st_size,
            recipient_key_ids=tuple(value.split()[0] for key, value in statuses if key == "ENC_TO"),
            signer_fingerprint=(result.pubkey_fingerprint or result.fingerprint)
            if result.valid
            else None,
            seconds=time.monotonic() - started,
        )

    def verify_detached(
        self,
        sig_path: str | os.PathLike,
        data_path: str | os.PathLike,
        *,
        allowed_fingerprints: Optional[Collection[str]] = None,
    ) -> str:
        """Verify a detached signature; return the signer's primary key fingerprint.

        The signer's public key must have been imported (`import_keys`). With
        `allowed_fingerprints`, a good signature by any other key is refused too.
        """
        sig, data = Path(sig_path), Path(data_path)
        for path, what in ((sig, "signature"), (data, "signed")):
            if not path.is_file():
                raise GpgError(f"GPG cannot verify {sig}: {what} file {path} does not exist")
        gpg = self._client()
        with open(sig, "rb") as stream:
            result = gpg.verify_file(stream, data_filename=str(data), close_file=False)
        if not result.valid:
            raise GpgBadSignature(
                f"GPG signature {sig} does not verify {data}: {_signature_problem(result)}"
            )
        fingerprint = result.pubkey_fingerprint or result.fingerprint
        if allowed_fingerprints is not None:
            allowed = {f.replace(" ", "").upper() for f in allowed_fingerprints}
            if fingerprint.upper() not in allowed:
                raise GpgBadSignature(
                    f"GPG signature {sig} on {data} is good but made by key {fingerprint}, "
                    "which is not an allowed signer"
                )
        return fingerprint

    def import_keys(self, armored: str) -> list[str]:
        """Import ASCII-armored keys into the homedir; return their primary fingerprints."""
        result = self._client().import_keys(armored)
        fingerprints = sorted({f for f in result.fingerprints if f})
        if not fingerprints:
            problems = "; ".join(
                sorted({str(r.get("text", "")).strip() for r in result.results if r.get("text")})
            )
            raise GpgError(
                f"GPG import into {self.homedir}: no keys imported"
                + (f" ({problems})" if problems else " (no OpenPGP key data found)")
            )
        return fingerprints

    def kill_agent(self) -> None:
        """Stop this homedir's gpg-agent (tests and the local stack call it on teardown)."""
        kill_agent(self.homedir, gpg_binary=self.gpg_binary)

    # -- internals --------------------------------------------------------------------------

    def _client(self) -> gnupg.GPG:
        if self._gpg is None:
            self._gpg = open_gpg(self.homedir, gpg_binary=self.gpg_binary)
        return self._gpg

    def _decrypt_error(self, src: Path, result: Any, *, passphrase_configured: bool) -> GpgError:
        statuses = _status_lines(result.stderr)
        keywords = {key for key, _ in statuses}
        error_codes = {
            int(value.rsplit(" ", 1)[-1]) & 0xFFFF
            for key, value in statuses
            if key == "ERROR" and value.rsplit(" ", 1)[-1].isdigit()
        }
        recipients = [value.split()[0] for key, value in statuses if key == "ENC_TO"]
        for_keys = f" (encrypted for key {', '.join(recipients)})" if recipients else ""
        if "BAD_PASSPHRASE" in keywords or GPG_ERR_BAD_PASSPHRASE in error_codes:
            return GpgBadPassphrase(
                f"GPG cannot decrypt {src}: bad passphrase for the secret key{for_keys} in "
                f"{self.homedir}"
            )
        if not passphrase_configured and (
            keywords & {"NEED_PASSPHRASE", "MISSING_PASSPHRASE"}
            or "need passphrase" in result.status
        ):
            return GpgBadPassphrase(
                f"GPG cannot decrypt {src}: the secret key{for_keys} is passphrase-protected "
                "and no passphrase is configured"
            )
        if "NEED_PASSPHRASE_SYM" in keywords:
            return GpgCorruptInput(
                f"GPG cannot decrypt {src}: it is symmetrically (password) encrypted, not "
                "encrypted to a public key"
            )
        if "NO_SECKEY" in keywords and "DECRYPTION_KEY" not in keywords:
            missing = [value.split()[0] for key, value in statuses if key == "NO_SECKEY"]
            return GpgNoSecretKey(
                f"GPG cannot decrypt {src}: it is encrypted for key {', '.join(missing)}, and "
                f"{self.homedir} holds no secret key for it (encrypted for someone else, or "
                "with an old key of ours)"
            )
        if "BADSIG" in keywords:
            signer = next(value for key, value in statuses if key == "BADSIG")
            return GpgCorruptInput(
                f"GPG cannot decrypt {src}: its inline signature by key {signer} is BAD, so "
                "the content was altered after signing"
            )
        if "NODATA" in keywords or not (recipients or keywords & {"BEGIN_DECRYPTION"}):
            return GpgCorruptInput(
                f"GPG cannot decrypt {src}: no OpenPGP encrypted data found (empty, garbage or "
                f"a file that was never encrypted): {gpg_messages(result.stderr)}"
            )
        if keywords & {"BADMDC", "DECRYPTION_FAILED"}:
            return GpgCorruptInput(
                f"GPG cannot decrypt {src}: the encrypted data is corrupt or truncated "
                f"(integrity check failed){for_keys}: {gpg_messages(result.stderr)}"
            )
        return GpgError(
            f"GPG cannot decrypt {src}: {result.status or 'gpg failed'}: "
            f"{gpg_messages(result.stderr)}"
        )


# ------------------------------------------------------------------------ homedir helpers


def open_gpg(homedir: str | os.PathLike, *, gpg_binary: str = "gpg") -> gnupg.GPG:
    """A python-gnupg handle on a prepared homedir (see `prepare_homedir`)."""
    import gnupg

    path = prepare_homedir(homedir, gpg_binary=gpg_binary)
    try:
        return gnupg.GPG(gnupghome=str(path), gpgbinary=gpg_binary)
    except (OSError, ValueError) as exc:
        raise GpgConfigError(f"GPG: cannot run {gpg_binary!r}: {exc}") from exc


def prepare_homedir(homedir: str | os.PathLike, *, gpg_binary: str = "gpg") -> Path:
    """Create the homedir (mode 700), check its socket path length, disable passphrase caching.

    Raises GpgConfigError when the agent's socket path would not fit in a Unix socket
    address, which otherwise surfaces later as an obscure "No agent running".
    """
    path = Path(homedir).expanduser().absolute()
    socket_dir = _socket_dir(path, gpg_binary)
    longest = os.path.join(socket_dir, LONGEST_SOCKET_NAME)
    if len(os.fsencode(longest)) > SUN_PATH_MAX:
        raise GpgConfigError(
            f"GPG homedir path is too long: {path} ({len(os.fsencode(str(path)))} bytes) puts "
            f"the gpg-agent socket at {len(os.fsencode(longest))} bytes, over the "
            f"{SUN_PATH_MAX}-byte limit of a Unix socket path. Use a shorter homedir, e.g. "
            "tempfile.mkdtemp(dir='/tmp') or /var/lib/credflow/gnupg"
        )
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise GpgConfigError(f"GPG: cannot create homedir {path}: {exc.strerror or exc}") from exc
    if _ensure_agent_conf(path / "gpg-agent.conf"):
        # An agent already running keeps its cache settings until it rereads the file.
        _gpgconf(gpg_binary, path, "--reload", "gpg-agent")
    return path


def kill_agent(homedir: str | os.PathLike, *, gpg_binary: str = "gpg") -> None:
    """Stop the gpg-agent of `homedir` (no-op when none runs)."""
    _gpgconf(gpg_binary, Path(homedir), "--kill", "gpg-agent")


def _ensure_agent_conf(conf: Path) -> bool:
    """Make sure the agent caches no passphrases; return True when the file changed."""
    try:
        original = conf.read_text()
    except FileNotFoundError:
        original = ""
    kept = [
        line
        for line in original.splitlines()
        if line.split(None, 1)[:1] not in ([key] for key in AGENT_CONF_SETTINGS)
    ]
    wanted = kept + [f"{key} {value}" for key, value in AGENT_CONF_SETTINGS.items()]
    text = "\n".join(wanted) + "\n"
    current = [line for line in original.splitlines() if line.strip()]
    if sorted(current) == sorted(line for line in wanted if line.strip()):
        return False
    conf.write_text(text)
    return True


def _socket_dir(homedir: Path, gpg_binary: str) -> str:
    output = _gpgconf(gpg_binary, homedir, "--list-dirs", "socketdir", check=False)
    return output.strip() or str(homedir)


def _gpgconf(gpg_binary: str, homedir: Path, *args: str, check: bool = True) -> str:
    gpgconf = _gpgconf_binary(gpg_binary)
    if gpgconf is None:
        if check:
            raise GpgConfigError("GPG: gpgconf not found next to gpg or on PATH; install gnupg")
        return ""
    result = subprocess.run(
        [gpgconf, "--homedir", str(homedir), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise GpgConfigError(
            f"GPG: `gpgconf {' '.join(args)}` failed for {homedir}: {result.stderr.strip()}"
        )
    return result.stdout


def _gpgconf_binary(gpg_binary: str) -> Optional[str]:
    located = shutil.which(gpg_binary)
    if located:
        sibling = Path(located).with_name("gpgconf")
        if sibling.exists():
            return str(sibling)
    return shutil.which("gpgconf")


# ------------------------------------------------------------------------ status parsing


def _status_lines(stderr: str) -> list[tuple[str, str]]:
    """`[GNUPG:] KEYWORD value` lines of gpg's status output (python-gnupg puts it on stderr)."""
    lines = []
    for line in (stderr or "").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, value = line[len("[GNUPG:] ") :].partition(" ")
            lines.append((keyword, value.strip()))
    return lines


def gpg_messages(stderr: str) -> str:
    """gpg's human-readable messages (never contain the passphrase), joined on one line."""
    messages = [
        line[len("gpg: ") :].strip()
        for line in (stderr or "").splitlines()
        if line.startswith("gpg: ")
    ]
    return "; ".join(messages[-4:]) or "no detail from gpg"


def _signature_problem(result: Any) -> str:
    status = result.status or ""
    key = result.key_id or "?"
    if status == "signature bad":
        return (
            f"BAD signature by key {key} ({result.username}): the file was modified after "
            "signing, or the signature belongs to another file"
        )
    if status == "no public key":
        return (
            f"signed by key {key}, which is not in the keyring; import the sender's public "
            "key first (an unknown key is never trusted)"
        )
    if status == "signature expected but not found":
        return "the signature file holds no OpenPGP signature"
    if status:
        return f"{status} (key {key})"
    return f"gpg could not verify it: {gpg_messages(result.stderr)}"
