"""GpgResource against real gpg and gpg-agent, with throwaway keys."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import gnupg
import pytest

from credflow_assets.local.gpg_keys import (
    encrypt_file,
    export_public_key,
    generate_key,
    kill_agent,
    sign_detached,
)
from credflow_assets.resources.gpg import (
    GpgBadPassphrase,
    GpgBadSignature,
    GpgConfigError,
    GpgCorruptInput,
    GpgError,
    GpgNoSecretKey,
    GpgOutputLimitExceeded,
    GpgResource,
)

MiB = 1024 * 1024
PASSPHRASE = "correct horse battery staple"
WRONG = "incorrect donkey"


@pytest.fixture(scope="module")
def keys():
    """Our homedir (passphrase-protected key) and a sender's (signing key + a stranger's key)."""
    ours = tempfile.mkdtemp(dir="/tmp", prefix="cfg-")  # short: agent socket path <= 107 bytes
    sender = tempfile.mkdtemp(dir="/tmp", prefix="cfg-")
    try:
        ours_fpr = generate_key(ours, "credflow@example.test", PASSPHRASE, fast_protection=True)
        sender_fpr = generate_key(sender, "feeds@sender.test")
        stranger_fpr = generate_key(sender, "someone-else@sender.test")
        GpgResource(homedir=sender).import_keys(export_public_key(ours, ours_fpr))
        imported = GpgResource(homedir=ours).import_keys(export_public_key(sender, sender_fpr))
        assert imported == [sender_fpr]
        yield {
            "ours": ours,
            "sender": sender,
            "ours_fpr": ours_fpr,
            "sender_fpr": sender_fpr,
            "stranger_fpr": stranger_fpr,
        }
    finally:
        for home in (ours, sender):
            kill_agent(home)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def shipment(keys, tmp_path_factory):
    """What a sender drops on the SFTP server: an encrypted, signed file and its signature."""
    work = tmp_path_factory.mktemp("gpg")
    plain = work / "roster.csv"
    plain.write_bytes(b"id,name,license\n" + os.urandom(256 * 1024))
    encrypted = encrypt_file(
        keys["sender"],
        plain,
        work / "roster.csv.gpg",
        [keys["ours_fpr"]],
        sign_with=keys["sender_fpr"],
    )
    signature = sign_detached(
        keys["sender"], encrypted, work / "roster.csv.gpg.sig", keys["sender_fpr"]
    )
    return {"plain": plain, "encrypted": encrypted, "signature": signature, "dir": work}


def ours(keys, passphrase=PASSPHRASE) -> GpgResource:
    return GpgResource(homedir=keys["ours"], passphrase=passphrase)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------- the happy path


def test_verify_then_decrypt(keys, shipment, tmp_path):
    gpg = ours(keys)
    signer = gpg.verify_detached(shipment["signature"], shipment["encrypted"])
    assert signer == keys["sender_fpr"]
    assert gpg.verify_detached(
        shipment["signature"], shipment["encrypted"], allowed_fingerprints=[keys["sender_fpr"]]
    ) == keys["sender_fpr"]

    result = gpg.decrypt_file(shipment["encrypted"], tmp_path / "roster.csv")

    assert sha256(tmp_path / "roster.csv") == sha256(shipment["plain"])
    assert result.size == shipment["plain"].stat().st_size
    assert result.signer_fingerprint == keys["sender_fpr"]  # the inline signature verified too
    assert len(result.recipient_key_ids) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "roster.csv"]  # no partial file left


def test_decrypt_streams_file_to_file(keys, tmp_path):
    plain = tmp_path / "big.bin"
    with open(plain, "wb") as out:
        for _ in range(24):
            out.write(os.urandom(1 << 20))
    encrypted = encrypt_file(keys["sender"], plain, tmp_path / "big.bin.gpg", [keys["ours_fpr"]])
    tracemalloc.start()
    try:
        ours(keys).decrypt_file(encrypted, tmp_path / "out.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"decrypt peaked at {peak / 1e6:.1f} MB of Python memory"
    assert sha256(tmp_path / "out.bin") == sha256(plain)


class PeakSize:
    """The largest total size of the files in a directory while it runs (sampled every ms)."""

    def __init__(self, directory: Path):
        self.directory, self.peak, self._stop = directory, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            total = 0
            for path in self.directory.iterdir():
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.001)

    def __enter__(self) -> PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def test_decryption_stops_at_max_output_bytes_and_keeps_nothing(keys, tmp_path):
    """A compressed OpenPGP bomb (128 MiB of zeros in about 128 KB): gpg is stopped once the
    plaintext reaches the limit, nothing past it is written, and the partial file is gone."""
    zeros = tmp_path / "zeros.csv"
    with open(zeros, "wb") as sparse:
        sparse.truncate(128 * MiB)  # read as zeros, costs no disk
    bomb = encrypt_file(keys["sender"], zeros, tmp_path / "zeros.csv.gpg", [keys["ours_fpr"]],
                        compress=True)
    zeros.unlink()
    assert bomb.stat().st_size < 2 * MiB
    out = tmp_path / "plain"
    out.mkdir()
    started = time.monotonic()
    with PeakSize(out) as watched, pytest.raises(GpgOutputLimitExceeded) as refused:
        ours(keys).decrypt_file(bomb, out / "zeros.csv", max_output_bytes=8 * MiB)
    assert time.monotonic() - started < 5  # stopped, not decrypted whole and then refused
    assert refused.value.limit == 8 * MiB and "8,388,608 bytes" in str(refused.value)
    assert list(out.iterdir()) == []
    assert 0 < watched.peak <= 8 * MiB, watched.peak

    within = ours(keys).decrypt_file(bomb, out / "all.csv", max_output_bytes=128 * MiB)
    assert within.size == 128 * MiB == (out / "all.csv").stat().st_size


# ---------------------------------------------------------------------------- signatures


def test_tampered_file_has_a_bad_signature(shipment, keys, tmp_path):
    tampered = tmp_path / "roster.csv.gpg"
    data = bytearray(shipment["encrypted"].read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(data)
    with pytest.raises(GpgBadSignature) as caught:
        ours(keys).verify_detached(shipment["signature"], tampered)
    assert str(tampered) in str(caught.value) and "BAD signature" in str(caught.value)


def test_signature_by_an_unknown_key_is_refused(shipment, keys, tmp_path):
    # The stranger's public key was never imported into our homedir.
    sig = sign_detached(
        keys["sender"], shipment["encrypted"], tmp_path / "x.sig", keys["stranger_fpr"]
    )
    with pytest.raises(GpgBadSignature, match="not in the keyring") as caught:
        ours(keys).verify_detached(sig, shipment["encrypted"])
    assert str(sig) in str(caught.value)


def test_signature_by_a_known_but_unallowed_key_is_refused(shipment, keys):
    with pytest.raises(GpgBadSignature, match="not an allowed signer"):
        ours(keys).verify_detached(
            shipment["signature"], shipment["encrypted"], allowed_fingerprints=[keys["ours_fpr"]]
        )


# ----------------------------------------------------------------------- decrypt failures


def test_wrong_passphrase_fails_even_after_a_successful_decrypt(keys, shipment, tmp_path):
    # The gpg-agent cache trap: a right passphrase first, then a wrong one in the same
    # homedir (same agent). With a caching agent the second decrypt would "work".
    ours(keys).decrypt_file(shipment["encrypted"], tmp_path / "first.csv")

    with pytest.raises(GpgBadPassphrase) as caught:
        ours(keys, WRONG).decrypt_file(shipment["encrypted"], tmp_path / "second.csv")

    message = str(caught.value)
    assert str(shipment["encrypted"]) in message and "bad passphrase" in message
    assert WRONG not in message and PASSPHRASE not in message
    assert not (tmp_path / "second.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["first.csv"]


def test_resource_repairs_a_homedir_whose_agent_caches_passphrases(keys, shipment, tmp_path):
    home = keys["ours"]
    conf = Path(home) / "gpg-agent.conf"
    original = conf.read_text()
    try:
        # Someone configured caching and the agent holds our passphrase (decrypted outside
        # the resource): exactly the state in which a wrong passphrase used to "work".
        conf.write_text(original.replace("cache-ttl 0", "cache-ttl 600"))
        kill_agent(home)
        raw = gnupg.GPG(gnupghome=home).decrypt_file(
            str(shipment["encrypted"]),
            passphrase=PASSPHRASE,
            output=str(tmp_path / "raw.csv"),
            extra_args=["--pinentry-mode", "loopback"],
        )
        assert raw.ok
        cached = gnupg.GPG(gnupghome=home).decrypt_file(
            str(shipment["encrypted"]),
            passphrase=WRONG,
            output=str(tmp_path / "cached.csv"),
            extra_args=["--pinentry-mode", "loopback"],
        )
        assert cached.ok, "precondition: the agent cache makes a wrong passphrase work"

        with pytest.raises(GpgBadPassphrase):
            ours(keys, WRONG).decrypt_file(shipment["encrypted"], tmp_path / "out.csv")
        assert "default-cache-ttl 0" in conf.read_text()
    finally:
        conf.write_text(original)
        kill_agent(home)


def test_missing_passphrase_is_reported_as_such(keys, shipment, tmp_path):
    with pytest.raises(GpgBadPassphrase, match="no passphrase is configured"):
        ours(keys, passphrase=None).decrypt_file(shipment["encrypted"], tmp_path / "out.csv")


def test_file_encrypted_for_another_key(keys, shipment, tmp_path):
    for_stranger = encrypt_file(
        keys["sender"], shipment["plain"], tmp_path / "not-ours.gpg", [keys["stranger_fpr"]]
    )
    with pytest.raises(GpgNoSecretKey) as caught:
        ours(keys).decrypt_file(for_stranger, tmp_path / "out.csv")
    message = str(caught.value)
    assert str(for_stranger) in message and "no secret key" in message
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("kind", ["garbage", "plaintext", "empty", "truncated", "bit-flipped"])
def test_corrupt_or_unencrypted_input(keys, shipment, tmp_path, kind):
    bad = tmp_path / f"{kind}.gpg"
    encrypted = shipment["encrypted"].read_bytes()
    if kind == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif kind == "plaintext":
        bad.write_bytes(shipment["plain"].read_bytes())
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(encrypted[: len(encrypted) // 2])
    else:
        flipped = bytearray(encrypted)
        flipped[len(flipped) // 2] ^= 0x01
        bad.write_bytes(flipped)

    with pytest.raises(GpgCorruptInput) as caught:
        ours(keys).decrypt_file(bad, tmp_path / "out.csv")

    assert str(bad) in str(caught.value)
    # gpg writes partial (or, with a failed integrity check, complete but manipulated)
    # plaintext before it notices; none of it may remain.
    assert [p.name for p in tmp_path.iterdir()] == [bad.name]


# ------------------------------------------------------------------------------- homedir


def test_a_too_long_homedir_fails_clearly(keys):
    long_home = Path("/tmp") / ("credflow-" + "x" * 110) / "gnupg"
    with pytest.raises(GpgConfigError, match="too long.*shorter homedir"):
        GpgResource(homedir=str(long_home)).import_keys(
            export_public_key(keys["sender"], keys["sender_fpr"])
        )
    assert not long_home.parent.exists()


def test_import_of_non_key_data_is_an_error(keys):
    home = tempfile.mkdtemp(dir="/tmp", prefix="cfg-")
    try:
        with pytest.raises(GpgError, match="no keys imported"):
            GpgResource(homedir=home).import_keys("not a key")
    finally:
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------------- streaming


def test_a_streamed_decryption_is_judged_before_its_end_and_stops_when_let_go(keys, tmp_path):
    """The landing decrypts as it uploads (provider_feeds/decrypt_stream.py): the plaintext
    comes in chunks, a manipulated message raises gpg's verdict instead of ending (so the
    upload reading it aborts), and a reader that stops early stops gpg."""
    from credflow_assets.provider_feeds.decrypt_stream import decrypted_chunks

    plain = tmp_path / "big.bin"
    plain.write_bytes(os.urandom(6 * MiB))
    encrypted = encrypt_file(keys["sender"], plain, tmp_path / "big.bin.gpg", [keys["ours_fpr"]])
    seconds: dict[str, float] = {}

    chunks = list(decrypted_chunks(ours(keys), encrypted, seconds=seconds,
                                   max_output_bytes=None))
    assert b"".join(chunks) == plain.read_bytes()
    # Streamed, about a MiB at a time (a chunk is 1 MiB plus what the last pipe read brought,
    # which is more on a loaded machine): several chunks, none holding the whole file.
    assert len(chunks) >= 3 and max(map(len, chunks)) < 2 * MiB and seconds["decrypt"] > 0

    flipped = bytearray(encrypted.read_bytes())
    flipped[len(flipped) * 3 // 4] ^= 0x01
    bad = tmp_path / "flipped.bin.gpg"
    bad.write_bytes(flipped)
    received = []
    with pytest.raises(GpgCorruptInput, match="manipulated"):
        for chunk in decrypted_chunks(ours(keys), bad, seconds={}, max_output_bytes=None):
            received.append(chunk)
    assert received  # plaintext came first: only the error kept it from looking complete

    stream = decrypted_chunks(ours(keys), encrypted, seconds={}, max_output_bytes=None)
    next(stream)
    stream.close()
    assert not [thread for thread in threading.enumerate()
                if thread.name == "credflow-gpg-decrypt"]
