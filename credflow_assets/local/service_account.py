"""Service-account keys for the local Drive server, so production's sign-in runs for real locally.

Production Drive signs in with a service-account key file (`drive.service_account_file`):
google-auth signs a JWT with the key's private half and trades it at the file's `token_uri` for
an access token. `create_key_file()` makes such a file for the local server:

- it writes a new RSA key in Google's JSON format (what the Cloud console's "Create key"
  downloads) with `token_uri` = the local server's `/token`, mode 0600;
- it registers the key's public half with the running server, over
  `POST /_admin/service_accounts` with the server's own token. The server keeps public halves
  only, in its state dir (drive.sqlite3), so they survive restarts and `/_admin/reset`.

Then `DriveResource(api_url=drive_url, service_account_file=path)` signs in exactly as it would
against Google. `write_key_file()` and `register_key_file()` are the two steps on their own
(a key that was never registered is refused, as Google refuses a deleted key).

Of the file's URLs only `token_uri` is used (by google-auth) and served; `auth_uri` and the
certificate URLs are there because Google's format has them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from credflow_assets.local.drive_server import register_service_account_key

DEFAULT_PROJECT = "credflow-local"
DEFAULT_ACCOUNT = "credflow-drive"
KEY_BITS = 2048


def create_key_file(
    path: str | os.PathLike, drive_url: str, admin_token: str, **names: str
) -> dict:
    """Write a new key file at `path` for the server at `drive_url` and register it there.

    `names`: `project_id`, `account` (the part of client_email before `@`). Returns the key's
    public facts (path, client_email, private_key_id, token_uri), never the private key.
    """
    facts = write_key_file(path, drive_url, **names)
    register_key_file(path, drive_url, admin_token)
    return facts


def write_key_file(
    path: str | os.PathLike,
    drive_url: str,
    *,
    project_id: str = DEFAULT_PROJECT,
    account: str = DEFAULT_ACCOUNT,
) -> dict:
    """Write a new, unregistered key file (Google's JSON format) whose token_uri is
    `{drive_url}token`. Returns its public facts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    root = drive_url if drive_url.endswith("/") else drive_url + "/"
    client_email = f"{account}@{project_id}.iam.gserviceaccount.com"
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    key = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        "client_email": client_email,
        "client_id": str(10**20 + secrets.randbelow(9 * 10**20)),  # 21 digits, as Google's
        "auth_uri": f"{root}o/oauth2/auth",
        "token_uri": f"{root}token",
        "auth_provider_x509_cert_url": f"{root}oauth2/v1/certs",
        "client_x509_cert_url": f"{root}robot/v1/metadata/x509/{quote(client_email)}",
        # google-auth's default universe: any other makes it skip the token endpoint.
        "universe_domain": "googleapis.com",
    }
    _write_private(Path(path), json.dumps(key, indent=2) + "\n")
    return _facts(Path(path), key)


def register_key_file(path: str | os.PathLike, drive_url: str, admin_token: str) -> dict:
    """Register the public half of the key in the file at `path` with the server at
    `drive_url`, so it can sign in there. Returns the key's public facts."""
    from cryptography.hazmat.primitives import serialization

    key = json.loads(Path(path).read_text(encoding="utf-8"))
    private_key = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    register_service_account_key(
        drive_url, admin_token, client_email=key["client_email"],
        private_key_id=key["private_key_id"], public_key_pem=public_pem,
    )
    return _facts(Path(path), key)


def _facts(path: Path, key: dict) -> dict:
    return {
        "path": str(path), "client_email": key["client_email"],
        "private_key_id": key["private_key_id"], "token_uri": key["token_uri"],
    }


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by its owner only, never half-written: a temporary file created
    0600 (not chmod-ed after the fact), then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
