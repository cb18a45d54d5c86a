"""The embedded local stack: start, stop, describe and provision the services under $CREDFLOW_HOME.

Each service is a real server on 127.0.0.1 (moto for S3/SQS/Glue, OpenSSH sshd for SFTP, the
local Drive server, an SMTP server keeping what it receives), started detached so it outlives
`credflow local up`, on a port chosen free at start and recorded in `$CREDFLOW_HOME/stack.json`.
Two homes give two independent stacks.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credflow_assets.config import CredflowConfig
from credflow_assets.local.process import LOOPBACK, pid_is_running, stop_pid

HOME_ENV_VAR = "CREDFLOW_HOME"
DEFAULT_HOME_NAME = ".credflow"
STATE_FILE = "stack.json"
SERVICES = ("moto", "drive", "sshd", "smtp")
# The local GPG key's passphrase is not a secret worth keeping: it protects throwaway demo keys.
LOCAL_GPG_PASSPHRASE = "credflow-local"
# gpg-agent's socket lives in the homedir; a Unix socket path may not exceed 108 bytes.
_MAX_GPG_HOME_LENGTH = 80


def stack_home(home: str | os.PathLike | None = None) -> Path:
    """$CREDFLOW_HOME, else `.credflow/` in the current directory, as an absolute path."""
    chosen = home or os.environ.get(HOME_ENV_VAR) or Path.cwd() / DEFAULT_HOME_NAME
    return Path(chosen).expanduser().resolve()


@dataclass
class StackState:
    home: Path
    config_path: Path
    drive_token: str
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, home: Path) -> StackState | None:
        path = home / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            home=home,
            config_path=Path(data["config_path"]),
            drive_token=data["drive_token"],
            services=data.get("services", {}),
        )

    def save(self) -> None:
        payload = {
            "config_path": str(self.config_path),
            "drive_token": self.drive_token,
            "services": self.services,
        }
        temporary = self.home / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(payload, indent=2))
        os.chmod(temporary, 0o600)
        temporary.replace(self.home / STATE_FILE)

    def running(self, name: str) -> bool:
        service = self.services.get(name)
        return bool(service) and pid_is_running(service["pid"])

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def gpg_home(self) -> Path:
        return _gpg_home(self.home)

    @property
    def directory_db_url(self) -> str:
        return f"sqlite:///{self.home / 'directory.db'}"

    @property
    def tables_db_url(self) -> str:
        return f"sqlite:///{self.home / 'tables.db'}"


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One `local up`/`down` at a time per home."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(home: Path, config: CredflowConfig, config_path: Path) -> StackState:
    """Start whatever is not running, then provision buckets, queues, folders and databases.

    Idempotent: running services are kept, provisioning only creates what is missing.
    """
    from credflow_assets.local import drive_server, moto_server, smtp_server, sshd

    with _locked(home):
        state = StackState.load(home) or StackState(
            home=home, config_path=config_path, drive_token=secrets.token_urlsafe(24)
        )
        state.config_path = config_path
        previous_ports = {name: s.get("port") for name, s in state.services.items()}
        starters = {
            "moto": lambda port: moto_server.start(home, port=port),
            "drive": lambda port: drive_server.start(home, port=port, token=state.drive_token),
            "sshd": lambda port: sshd.start(home, port=port),
            "smtp": lambda port: smtp_server.start(home, port=port),
        }
        for name, start in starters.items():
            if not state.running(name):
                # Reuse the last port when it is free, so links recorded earlier keep working.
                state.services[name] = start(_port_if_free(previous_ports.get(name)))
                state.save()
        state.save()
        _provision(state, config)
        return state


def down(home: Path) -> list[str]:
    """Stop every recorded service; data stays under the home for the next `up`."""
    with _locked(home):
        state = StackState.load(home)
        if state is None:
            return []
        stopped = []
        for name, service in list(state.services.items()):
            if pid_is_running(service["pid"]):
                stop_pid(service["pid"])
                stopped.append(name)
            del state.services[name]
        _stop_gpg_agent(state.gpg_home)
        state.save()
        return stopped


def status(home: Path) -> dict[str, dict[str, Any]]:
    state = StackState.load(home)
    report = {}
    for name in SERVICES:
        service = (state.services.get(name) if state else None) or {}
        report[name] = {
            "running": bool(service) and pid_is_running(service["pid"]),
            "pid": service.get("pid"),
            "port": service.get("port"),
        }
    return report


def require_running(home: Path) -> StackState:
    state = StackState.load(home)
    missing = [name for name in SERVICES if state is None or not state.running(name)]
    if missing:
        raise RuntimeError(
            f"the local stack under {home} is not running ({', '.join(missing)} down): "
            "run `credflow local up`"
        )
    return state


def environment(state: StackState, config: CredflowConfig) -> dict[str, str]:
    """The variables any tool needs to reach this stack (and the config's {env: …} settings)."""
    from credflow_assets.local.moto_server import LOCAL_AWS_ENV

    moto, drive, sshd = (state.services[name] for name in ("moto", "drive", "sshd"))
    # A stack started before the SMTP server existed has none until its next `local up`.
    smtp = state.services.get("smtp")
    return {
        **LOCAL_AWS_ENV,
        "AWS_ENDPOINT_URL": moto["endpoint_url"],
        "AWS_DEFAULT_REGION": config.aws.region,
        "AWS_REGION": config.aws.region,
        "CREDFLOW_HOME": str(state.home),
        "CREDFLOW_CONFIG": str(state.config_path),
        "CREDFLOW_DRIVE_URL": drive["url"],
        "CREDFLOW_DRIVE_TOKEN": state.drive_token,
        "CREDFLOW_SFTP_HOST": sshd["host"],
        "CREDFLOW_SFTP_PORT": str(sshd["port"]),
        "CREDFLOW_SFTP_USER": sshd["user"],
        "CREDFLOW_SFTP_KEY_FILE": sshd["key_file"],
        "CREDFLOW_SFTP_KNOWN_HOSTS": sshd["known_hosts"],
        "CREDFLOW_SFTP_ROOT": sshd["root"],
        "CREDFLOW_DIRECTORY_DB_URL": state.directory_db_url,
        "CREDFLOW_TABLES_DB_URL": state.tables_db_url,
        **({"CREDFLOW_SMTP_HOST": smtp["host"], "CREDFLOW_SMTP_PORT": str(smtp["port"])}
           if smtp else {}),
        "CREDFLOW_GPG_HOME": str(state.gpg_home),
        "CREDFLOW_GPG_PASSPHRASE": LOCAL_GPG_PASSPHRASE,
        # The demo provider's public signing key (its private half signs the demo files).
        "CREDFLOW_ACME_HEALTH_SIGNING_KEY": str(state.home / "provider-keys" / "acme_health.asc"),
        "DAGSTER_HOME": str(state.dagster_home),
    }


def export_lines(variables: dict[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in variables.items())


def _port_if_free(port: int | None) -> int | None:
    import socket

    if port is None:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return None
    return port


def _provision(state: StackState, config: CredflowConfig) -> None:
    from credflow_assets.local import moto_server

    endpoint = state.services["moto"]["endpoint_url"]
    region = config.aws.region
    for bucket in config.buckets.model_dump().values():
        moto_server.ensure_bucket(endpoint, region, bucket)
    for queue in (config.events.signup_uploads, config.events.staging_uploads):
        moto_server.ensure_s3_event_queue(
            endpoint, region,
            bucket=config.bucket(queue.bucket), prefix=queue.prefix, queue_name=queue.queue,
        )
    moto_server.ensure_glue_database(endpoint, region, config.staged_tables.glue_database)
    _provision_drive_folders(state, config)
    (state.home / "sftp-root").mkdir(exist_ok=True)
    for provider in config.providers:
        (Path(state.services["sshd"]["root"]) / provider.remote_dir).mkdir(
            parents=True, exist_ok=True
        )
    _write_dagster_home(state.dagster_home)
    _provision_gpg_key(state.gpg_home)


LOCAL_GPG_IDENTITY = "credflow-local@localhost"


def _provision_gpg_key(gpg_home: Path) -> None:
    """credflow's own key pair: local provider files are encrypted to it, as real ones are."""
    from credflow_assets.local.gpg_keys import generate_key
    from credflow_assets.resources.gpg import open_gpg, prepare_homedir

    prepare_homedir(gpg_home)
    if not open_gpg(gpg_home).list_keys(secret=True):
        # fast_protection: a throwaway local key need not cost seconds of key stretching.
        generate_key(gpg_home, LOCAL_GPG_IDENTITY, LOCAL_GPG_PASSPHRASE, fast_protection=True)


def _provision_drive_folders(state: StackState, config: CredflowConfig) -> None:
    """Create the folders the config names, with the ids it names (as a Drive admin would)."""
    from credflow_assets.resources.drive import DriveResource

    drive = DriveResource(api_url=state.services["drive"]["url"], token=state.drive_token)
    wanted = {config.drive.mpf_root_folder_id: "Magically Processed Folders"}
    for feed in config.feeds:
        wanted[feed.inbound_folder_id] = f"{feed.name} inbound"
        wanted[feed.outbound_folder_id] = f"{feed.name} outbound"
    for folder_id, name in wanted.items():
        if drive.find_file(folder_id) is None:
            drive.create_folder(name, parent_id=None, folder_id=folder_id)


def _write_dagster_home(dagster_home: Path) -> None:
    import dagster as dg

    dagster_home.mkdir(parents=True, exist_ok=True)
    template = Path(__file__).with_name("dagster.yaml")
    target = dagster_home / "dagster.yaml"
    if not target.exists() or target.read_text() != template.read_text():
        target.write_text(template.read_text())
    # Create the instance's SQLite storage now: two processes creating it at the same moment
    # (two `credflow sync`s on a fresh stack) collide with "table runs already exists".
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)


def _gpg_home(home: Path) -> Path:
    inside = home / "gnupg"
    if len(str(inside)) <= _MAX_GPG_HOME_LENGTH:
        return inside
    # A deep checkout would push gpg-agent's socket path past the 108-byte limit.
    import hashlib

    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path("/tmp") / f"credflow-gnupg-{digest}"


def _stop_gpg_agent(gpg_home: Path) -> None:
    from credflow_assets.resources.gpg import kill_agent

    if gpg_home.exists():
        kill_agent(gpg_home)
