"""GnuPG: streaming decryption, detached-signature verification and key import.

    gpg = GpgResource(homedir=EnvVar("GNUPG_HOME"), passphrase=EnvVar("GPG_PASSPHRASE"))
    result = gpg.decrypt_file(encrypted_path, plain_path, max_output_bytes=100 * 2**20)
    signer = gpg.verify_detached(sig_path, data_path)

Decryption streams file to file, with a bound: gpg reads the encrypted file itself (its path
is gpg's operand; its stdin carries only the passphrase, never argv) and writes the plaintext
to a pipe, which this resource copies to a temporary file next to `dest_path` in 1 MiB reads,
counting. OpenPGP compresses inside the encryption, so a 2 MB message can hold 1.5 GB of
zeros: past `max_output_bytes`, gpg is killed and the partial file removed, and no more than
the limit was ever written (`GpgOutputLimitExceeded`). python-gnupg's `decrypt_file(output=)`
cannot stop early (it waits for gpg to finish), hence gpg driven here. The plaintext is
renamed into place only when gpg reports success: on failure gpg leaves partial, or with a
failed integrity check even complete but manipulated, plaintext behind, and that must never
look like a result.

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

import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection
import dataclasses
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
OUTPUT_CHUNK = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux: a 1 MiB pipe, fewer reads


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


class GpgOutputLimitExceeded(GpgError):
    """The plaintext would pass `max_output_bytes`; gpg was stopped and nothing kept."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class DecryptResult:
    src_path: Path
    dest_path: Optional[Path]  # None from `decrypt_to`
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
        self,
        src_path: str | os.PathLike,
        dest_path: str | os.PathLike,
        *,
        max_output_bytes: Optional[int] = None,
    ) -> DecryptResult:
        """Decrypt `src_path` into `dest_path`, streaming; raise a GpgError subclass on failure.

        Past `max_output_bytes` of plaintext gpg is stopped, the partial file removed and
        `GpgOutputLimitExceeded` raised; at most `max_output_bytes` were written.
        """
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out:
                result = self.decrypt_to(src_path, out, max_output_bytes=max_output_bytes)
            os.replace(partial, dest)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return dataclasses.replace(result, dest_path=dest)

    def decrypt_to(
        self,
        src_path: str | os.PathLike,
        out: Any,
        *,
        max_output_bytes: Optional[int] = None,
    ) -> DecryptResult:
        """Decrypt `src_path` into `out` (anything with `write(bytes-like)`: a file, or the
        next stage of a pipeline), streaming; raise a GpgError subclass on failure.

        gpg's verdict (integrity check included) comes only after the last byte: until this
        returns, what was written is unverified and must not be used as a result (a caller
        streaming it onwards holds back its end until then). `dest_path` of the result is
        None. A `write` that raises stops gpg and is re-raised.
        """
        src = Path(src_path)
        if not src.is_file():
            raise GpgError(f"GPG cannot decrypt {src}: no such file")
        self._client()  # a prepared homedir: agent caching off, socket path checked
        passphrase = self.passphrase or None  # "" would make gpg read the passphrase from the data
        if passphrase is not None and any(char in passphrase for char in "\r\n\x00"):
            raise GpgBadPassphrase(
                f"GPG cannot decrypt {src}: the configured passphrase contains a line break "
                "or other control character, which gpg cannot receive"
            )
        started = time.monotonic()
        returncode, stderr, size = self._run_decrypt(src, out, passphrase, max_output_bytes)
        statuses = _status_lines(stderr)
        keywords = {key for key, _ in statuses}
        # As python-gnupg judges: gpg's status, not its exit code (2 for a good message
        # whose inline signature is by a key we do not hold).
        ok = returncode >= 0 and "DECRYPTION_OKAY" in keywords and not keywords & {
            "DECRYPTION_FAILED", "BADMDC", "BADSIG"}
        if not ok:
            raise self._decrypt_error(src, stderr, passphrase_configured=passphrase is not None)
        return DecryptResult(
            src_path=src,
            dest_path=None,
            size=size,
            recipient_key_ids=tuple(value.split()[0] for key, value in statuses if key == "ENC_TO"),
            signer_fingerprint=_valid_signer(statuses),
            seconds=time.monotonic() - started,
        )

    def _run_decrypt(self, src: Path, out, passphrase: Optional[str],
                     max_output_bytes: Optional[int]) -> tuple[int, str, int]:
        """Run `gpg --decrypt` with its plaintext on a pipe copied into `out`, counting;
        (exit status, stderr with the status lines, bytes written)."""
        command = [self.gpg_binary, "--homedir", str(Path(self.homedir).expanduser().absolute()),
                   "--batch", "--no-tty", "--yes", "--status-fd", "2", *DECRYPT_ARGS]
        if passphrase is not None:
            command += ["--passphrase-fd", "0"]  # read from stdin: never in argv or logs
        # gpg reads the file itself (its path is the operand): piping the data through stdin
        # would lose the status lines to a broken pipe whenever gpg stops early (no key).
        command += ["--decrypt", "--", str(src.absolute())]
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE if passphrase is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise GpgConfigError(f"GPG: cannot run {self.gpg_binary!r}: {exc}") from exc
        stderr: list[bytes] = []
        # stderr is read aside: gpg blocks once a pipe is full, and stdout is read here.
        reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()),
                                  name="credflow-gpg-stderr", daemon=True)
        reader.start()
        written = 0
        try:
            if passphrase is not None:
                try:
                    process.stdin.write(passphrase.encode() + b"\n")
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # gpg stopped before reading it; its status lines say why
            try:
                fcntl.fcntl(process.stdout.fileno(), F_SETPIPE_SZ, OUTPUT_CHUNK)
            except OSError:
                pass  # an optimisation only
            # gpg writes 4 KiB at a time: one reused buffer, not a new bytes object per read
            # (that cost twice gpg's own time).
            buffer = memoryview(bytearray(OUTPUT_CHUNK))
            while count := process.stdout.readinto(buffer):
                if max_output_bytes is not None and written + count > max_output_bytes:
                    raise GpgOutputLimitExceeded(
                        f"GPG decryption of {src} stopped: its plaintext passes "
                        f"{max_output_bytes:,} bytes", max_output_bytes)
                out.write(buffer[:count])
                written += count
            returncode = process.wait()
        except BaseException:
            process.kill()  # stops gpg mid-stream: nothing more is produced or written
            process.wait()
            raise
        finally:
            reader.join()
            process.stdout.close()
            process.stderr.close()
        return returncode, b"".join(stderr).decode("utf-8", "replace"), written

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

    def _decrypt_error(self, src: Path, stderr: str, *, passphrase_configured: bool) -> GpgError:
        statuses = _status_lines(stderr)
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
        if not passphrase_configured and keywords & {"NEED_PASSPHRASE", "MISSING_PASSPHRASE"}:
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
                f"a file that was never encrypted): {gpg_messages(stderr)}"
            )
        if keywords & {"BADMDC", "DECRYPTION_FAILED"}:
            return GpgCorruptInput(
                f"GPG cannot decrypt {src}: the encrypted data is corrupt or truncated "
                f"(integrity check failed){for_keys}: {gpg_messages(stderr)}"
            )
        return GpgError(f"GPG cannot decrypt {src}: gpg failed: {gpg_messages(stderr)}")


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


def _valid_signer(statuses: list[tuple[str, str]]) -> Optional[str]:
    """The primary key fingerprint of a good inline signature (VALIDSIG's last field), if any."""
    keywords = {key for key, _ in statuses}
    if keywords & {"BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG"}:
        return None
    for key, value in statuses:
        if key == "VALIDSIG":
            fields = value.split()
            return fields[9] if len(fields) >= 10 else fields[0]
    return None


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
