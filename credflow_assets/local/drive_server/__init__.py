"""A local Google Drive: an HTTP server speaking the subset of the Drive v3 REST API credflow
uses, so google-api-python-client talks to it unchanged (see `routes.py` for the routes).

Standard library only, so it starts fast. `start()` runs it as a detached process; the
`set_faults`, `fault_state` and `reset` helpers drive its admin endpoints from tests, and
`register_service_account_key` lets a service-account key sign in (see
credflow_assets.local.service_account). Its web pages (pages.py) and its token endpoint
(oauth.py) need no token. Each change records who made it (`lastModifyingUser`, users.py):
the request's token says who that is, and `POST /_admin/users` mints a token acting as a named
person (`credflow_assets.local.seed_drive_feeds.as_drive_user`).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from credflow_assets.local.process import free_port, spawn_detached, wait_for_port

__all__ = ["start", "set_faults", "fault_state", "reset", "register_service_account_key"]


def start(home: Path, *, port: int | None = None, token: str) -> dict:
    """Start the server for `home` (state in HOME/drive, log in HOME/logs/drive.log).

    Returns {"pid", "port", "url"}; `url` is the root URL ("http://127.0.0.1:P/") to give
    DriveResource as `api_url`. Raises ServiceStartError if it does not come up.
    """
    home = Path(home)
    port = port or free_port()
    log_path = home / "logs" / "drive.log"
    command = [
        sys.executable, "-m", "credflow_assets.local.drive_server",
        "--state-dir", str(home / "drive"), "--port", str(port),
    ]
    # The token goes through the environment, not argv, so `ps` does not show it.
    process = spawn_detached("drive", command, log_path, env={"CREDFLOW_DRIVE_TOKEN": token})
    wait_for_port("drive", port, process=process, log_path=log_path)
    return {"pid": process.pid, "port": port, "url": f"http://127.0.0.1:{port}/"}


def set_faults(url: str, token: str, **spec) -> dict:
    """Make the next Drive requests fail: `fail_next=N, status=S` fails exactly N (S defaults
    to 429); `rate=P, statuses=[...], seed=K` fails a seeded random share; `methods=["PUT"]`
    limits either to some HTTP methods; no arguments clears. Returns the fault state,
    whose `injected` counts the failures served since this call."""
    return _admin(url, token, "POST", "faults", spec)


def fault_state(url: str, token: str) -> dict:
    """The current fault state: what remains to inject, `injected` and `requests` counts."""
    return _admin(url, token, "GET", "faults")


def reset(url: str, token: str) -> dict:
    """Wipe every file and upload session, and clear faults."""
    return _admin(url, token, "POST", "reset", {})


def register_service_account_key(
    url: str, token: str, *, client_email: str, private_key_id: str, public_key_pem: str
) -> dict:
    """Let the key `private_key_id` of `client_email` sign in at the server's /token: the server
    keeps this public half (in its state dir, across restarts and resets) and checks sign-in
    JWTs against it."""
    body = {"client_email": client_email, "private_key_id": private_key_id,
            "public_key": public_key_pem}
    return _admin(url, token, "POST", "service_accounts", body)


def _admin(url: str, token: str, method: str, name: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/_admin/{name}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
