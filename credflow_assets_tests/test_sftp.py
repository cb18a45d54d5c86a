"""SftpResource against a real OpenSSH sshd on loopback (credflow_assets.local.sshd)."""

from __future__ import annotations

import base64
import encodings.idna  # noqa: F401 - preloaded for the forked unprivileged sshd (see below)
import hashlib
import multiprocessing
import os
import pwd
import shutil
import signal
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest

from credflow_assets.local import sshd
from credflow_assets.local.process import ServiceStartError, stop_pid
from credflow_assets.resources.sftp.download import WINDOW_BYTES, WINDOWS_IN_FLIGHT
from credflow_assets.resources.sftp import (
    WINDOW_BYTES,
    WINDOWS_IN_FLIGHT,
    DownloadResult,
    RemoteFile,
    SftpAuthError,
    SftpConfigError,
    SftpConnectionError,
    SftpHostKeyError,
    SftpNoSuchFile,
    SftpNotAFile,
    SftpPermissionDenied,
    SftpResource,
)

BIG_SIZE = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    info = sshd.start(tmp_path_factory.mktemp("sftp-home"))
    yield info
    stop_pid(info["pid"])


@pytest.fixture(scope="module")
def feeds(server):
    """A served directory with a 50 MiB file, a small file and a subdirectory."""
    root = Path(server["root"]) / "feeds"
    (root / "sub").mkdir(parents=True)
    (root / "small.csv").write_bytes(b"id,name\n1,Lamb\n")
    digest = hashlib.sha256()
    with open(root / "big.bin", "wb") as out:
        for _ in range(BIG_SIZE // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            out.write(block)
    return {"root": root, "big_sha256": digest.hexdigest()}


def make_resource(server, **overrides) -> SftpResource:
    config = dict(
        host=server["host"],
        port=server["port"],
        username=server["user"],
        private_key_file=server["key_file"],
        known_hosts_file=server["known_hosts"],
    )
    config.update(overrides)
    return SftpResource(**config)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def connection_processes(listener_pid: int) -> list[int]:
    """The per-connection sshd processes: every descendant of the listening sshd."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], list(children.get(listener_pid, []))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def drop_connections(listener_pid: int) -> int:
    """Kill the server side of every open connection, as a network failure would."""
    killed = 0
    for pid in connection_processes(listener_pid):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


# ------------------------------------------------------------------------------ listing


def test_list_dir(server, feeds):
    with make_resource(server).open_session() as session:
        entries = session.list_dir("feeds")

    assert [e.name for e in entries] == ["big.bin", "small.csv", "sub"]
    small = entries[1]
    assert small == RemoteFile(
        name="small.csv",
        path="feeds/small.csv",
        size=len(b"id,name\n1,Lamb\n"),
        mtime=int((feeds["root"] / "small.csv").stat().st_mtime),
        is_dir=False,
    )
    assert entries[0].size == BIG_SIZE
    assert entries[2].is_dir


# ----------------------------------------------------------------------------- download


def test_download_streams_50mb_in_bounded_memory(server, feeds, tmp_path):
    target = tmp_path / "big.bin"
    with make_resource(server).open_session() as session:
        tracemalloc.start()
        try:
            result = session.download("feeds/big.bin", target)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    # The design's bound: the replies of the windows in flight, unwritten (when the disk writer
    # falls behind, as on a busy machine, all of them at once), plus a few MiB of paramiko's
    # message buffers; reading the whole file ahead (plain prefetch) would hold ~50 MB.
    bound = WINDOWS_IN_FLIGHT * WINDOW_BYTES + 4 * 1024 * 1024
    assert peak < bound, (f"download peaked at {peak / 1e6:.1f} MB of Python memory, above "
                          f"{bound / 1e6:.1f} MB")
    assert sha256_of(target) == feeds["big_sha256"]
    assert result.size == BIG_SIZE and result.attempts == 1 and not result.resumed
    assert list(tmp_path.iterdir()) == [target]  # no .part file left behind


def test_download_resumes_after_the_connection_drops(server, feeds, tmp_path):
    target = tmp_path / "big.bin"
    dropped_at: list[int] = []

    def progress(done: int, total: int) -> None:
        if not dropped_at and done >= 16 * 1024 * 1024:
            assert drop_connections(server["pid"]) > 0
            dropped_at.append(done)

    with make_resource(server).open_session() as session:
        result = session.download("feeds/big.bin", target, progress=progress)

    assert isinstance(result, DownloadResult)
    assert result.attempts == 2
    assert len(result.resumed_from) == 1
    # It continued where the local file ended, not from zero (the replies that had arrived
    # before the drop, up to the windows in flight, were written first).
    in_flight = WINDOWS_IN_FLIGHT * WINDOW_BYTES
    assert dropped_at[0] - in_flight <= result.resumed_from[0] <= dropped_at[0] + in_flight
    assert sha256_of(target) == feeds["big_sha256"]


def test_download_gives_up_after_max_attempts(server, feeds, tmp_path):
    target = tmp_path / "big.bin"
    next_drop = [2 * 1024 * 1024]

    def progress(done: int, total: int) -> None:
        if done >= next_drop[0]:
            drop_connections(server["pid"])
            next_drop[0] = done + 2 * 1024 * 1024

    with make_resource(server, max_attempts=2).open_session() as session:
        with pytest.raises(SftpConnectionError) as caught:
            session.download("feeds/big.bin", target, progress=progress)

    message = str(caught.value)
    assert "feeds/big.bin" in message and f"{server['host']}:{server['port']}" in message
    assert "gave up after 2" in message
    assert list(tmp_path.iterdir()) == []  # neither the target nor a .part file


def test_missing_file_is_a_clear_error(server, feeds, tmp_path):
    with make_resource(server).open_session() as session:
        with pytest.raises(SftpNoSuchFile) as caught:
            session.download("feeds/nope.csv", tmp_path / "nope.csv")
    message = str(caught.value)
    assert "'feeds/nope.csv'" in message and f"{server['host']}:{server['port']}" in message
    assert "no such file" in message
    assert list(tmp_path.iterdir()) == []


def test_directory_is_not_downloadable(server, feeds, tmp_path):
    with make_resource(server).open_session() as session:
        with pytest.raises(SftpNotAFile, match=r"'feeds/sub'.*a directory"):
            session.download("feeds/sub", tmp_path / "sub")


# ---------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused(server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SftpHostKeyError) as caught:
        with make_resource(server, known_hosts_file=str(empty)).open_session():
            pass
    message = str(caught.value)
    assert f"{server['host']}:{server['port']}" in message
    assert server["host_key_fingerprint"] in message  # what the server offered
    assert "no entry" in message
    assert empty.read_text() == ""  # never auto-added


def test_wrong_fingerprint_is_refused(server):
    wrong = "SHA256:" + base64.b64encode(bytes(32)).decode().rstrip("=")
    resource = make_resource(server, known_hosts_file=None, host_key_fingerprint=wrong)
    with pytest.raises(SftpHostKeyError) as caught:
        with resource.open_session():
            pass
    message = str(caught.value)
    assert f"{server['host']}:{server['port']}" in message
    assert server["host_key_fingerprint"] in message and wrong in message


def test_changed_host_key_is_refused(server, tmp_path):
    # known_hosts pins a different ed25519 key (our client key) for this host and port.
    other_key = Path(server["key_file"] + ".pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{server['host']}]:{server['port']} {other_key[0]} {other_key[1]}\n")
    with pytest.raises(SftpHostKeyError) as caught:
        with make_resource(server, known_hosts_file=str(known_hosts)).open_session():
            pass
    message = str(caught.value)
    assert "CHANGED" in message and f"{server['host']}:{server['port']}" in message
    assert server["host_key_fingerprint"] in message  # offered
    assert sshd.fingerprint_of(Path(server["key_file"] + ".pub")) in message  # expected


def test_pinned_fingerprint_alone_is_enough(server, feeds):
    # Also accepts the whole `ssh-keygen -lf` line.
    line = f"256 {server['host_key_fingerprint']} credflow (ED25519)"
    resource = make_resource(server, known_hosts_file=None, host_key_fingerprint=line)
    with resource.open_session() as session:
        assert "small.csv" in [e.name for e in session.list_dir("feeds")]


def test_a_pinned_host_key_is_required(server):
    resource = make_resource(server, known_hosts_file=None, host_key_fingerprint=None)
    with pytest.raises(SftpConfigError, match="no pinned host key"):
        with resource.open_session():
            pass


# --------------------------------------------------------------------- auth and network


def test_auth_failure_names_user_and_key_file_but_not_the_key(server, tmp_path):
    # A valid ed25519 key that is not in authorized_keys: the server's own host key.
    stranger = tmp_path / "stranger_key"
    shutil.copy(Path(server["key_file"]).with_name("ssh_host_ed25519_key"), stranger)
    started = time.monotonic()
    with pytest.raises(SftpAuthError) as caught:
        with make_resource(server, private_key_file=str(stranger)).open_session():
            pass
    message = str(caught.value)
    assert repr(server["user"]) in message and str(stranger) in message
    assert f"{server['host']}:{server['port']}" in message
    secret_body = "".join(stranger.read_text().splitlines()[1:-1])
    assert secret_body[:24] not in message and "PRIVATE KEY" not in message
    assert time.monotonic() - started < 5  # refused auth is not retried


def test_connection_refused_is_retried_then_reported(server):
    from credflow_assets.local.process import free_port

    port = free_port()  # nothing listens here
    with pytest.raises(SftpConnectionError) as caught:
        with make_resource(server, port=port, max_attempts=2).open_session():
            pass
    assert f"{server['host']}:{port}" in str(caught.value)
    assert "gave up after 2" in str(caught.value)


# -------------------------------------------------------------------- permission denied
#
# root reads any file whatever its mode, so a chmod 000 file served by a root sshd is
# readable. The honest setup is the production one: an sshd whose user lacks the permission.
# As root we start a second sshd as an unprivileged system account, through the same
# `sshd.start` (which also proves the unprivileged mode works). `nobody` does not do:
# nss-systemd gives it a locked shadow entry that sshd refuses under `UsePAM no`.

UNPRIVILEGED_CANDIDATES = ("daemon", "bin", "www-data")


def _unprivileged_account() -> pwd.struct_passwd | None:
    for name in UNPRIVILEGED_CANDIDATES:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0 and os.path.exists(entry.pw_shell or "/bin/sh"):
            return entry
    return None


def _start_as(account: pwd.struct_passwd, home: str, results) -> None:
    try:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        results.put(sshd.start(Path(home)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def unprivileged_server(server):
    """(server info, served root) where the sshd user cannot read a chmod 000 file."""
    if os.geteuid() != 0:
        yield server
        return
    account = _unprivileged_account()
    if account is None:
        pytest.skip(f"running as root and none of {UNPRIVILEGED_CANDIDATES} exists")
    "x".encode("idna")  # the child cannot import codecs from a root-only interpreter tree
    home = tempfile.mkdtemp(dir="/tmp", prefix="cf-sftp-")
    os.chown(home, account.pw_uid, account.pw_gid)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_start_as, args=(account, home, results))
    child.start()
    info = results.get(timeout=30)
    child.join(timeout=10)
    if isinstance(info, str):
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"unprivileged sshd did not start: {info}")
    assert info["user"] == account.pw_name
    yield info
    stop_pid(info["pid"])
    shutil.rmtree(home, ignore_errors=True)


def test_permission_denied_is_a_clear_error(unprivileged_server, tmp_path):
    secret = Path(unprivileged_server["root"]) / "secret.csv"
    secret.write_text("not for you\n")
    secret.chmod(0)
    try:
        with make_resource(unprivileged_server).open_session() as session:
            assert "secret.csv" in [e.name for e in session.list_dir(".")]  # visible...
            with pytest.raises(SftpPermissionDenied) as caught:  # ...but not readable
                session.download("secret.csv", tmp_path / "secret.csv")
    finally:
        secret.unlink()
    message = str(caught.value)
    assert "'secret.csv'" in message and "permission denied" in message
    assert f"{unprivileged_server['user']}@{unprivileged_server['host']}" in message
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the server


def test_restart_reuses_keys_and_rewrites_known_hosts(tmp_path):
    first = sshd.start(tmp_path)
    try:
        with pytest.raises(ServiceStartError, match=f"already running \\(pid {first['pid']}\\)"):
            sshd.start(tmp_path)
    finally:
        stop_pid(first["pid"])
    second = sshd.start(tmp_path)
    try:
        assert second["host_key_fingerprint"] == first["host_key_fingerprint"]
        assert second["key_file"] == first["key_file"]
        known = Path(second["known_hosts"]).read_text()
        assert known.startswith(f"[127.0.0.1]:{second['port']} ssh-ed25519 ")
        with make_resource(second).open_session() as session:
            assert session.list_dir(".") == []
    finally:
        stop_pid(second["pid"])
