"""Production's Drive sign-in, for real, against the local Drive server.

A service-account key file made by credflow_assets.local.service_account; google-auth signs its
JWT and trades it at the key's token_uri (the server's /token) for an access token, exactly as
against Google. Real servers in temporary homes; no mocks.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import stat
import threading
import time
from urllib.parse import urlencode

import google_auth_httplib2
import httplib2
import pytest
from google.auth import crypt, jwt
from google.oauth2 import service_account

from credflow_assets.local.drive_server import start
from credflow_assets.local.process import stop_pid
from credflow_assets.local.service_account import (
    create_key_file,
    register_key_file,
    write_key_file,
)
from credflow_assets.resources.drive import DRIVE_SCOPE, DriveError, DriveResource

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = secrets.token_hex(16)
    home = tmp_path_factory.mktemp("drive_sa")
    info = start(home, token=token)
    yield {**info, "token": token, "home": home}
    stop_pid(info["pid"])


@pytest.fixture(scope="module")
def key_file(server, tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "drive-service-account.json"
    create_key_file(path, server["url"], server["token"])
    return path


def post(server: dict, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def get_status(server: dict, path: str, token: str | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token
                           else {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def token_request(server: dict, assertion: str, grant_type: str = JWT_BEARER):
    form = urlencode({"grant_type": grant_type, "assertion": assertion}).encode()
    return post(server, "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})


def sign(key_file, **claims) -> str:
    """A JWT-bearer assertion signed with the key in `key_file`, as google-auth makes them,
    with `claims` replacing (None: removing) its defaults."""
    key = json.loads(key_file.read_text())
    now = int(time.time())
    payload = {"iss": key["client_email"], "aud": "https://oauth2.googleapis.com/token",
               "scope": DRIVE_SCOPE, "iat": now, "exp": now + 3600, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    signer = crypt.RSASigner.from_service_account_info(key)
    return jwt.encode(signer, payload).decode()


def test_the_key_file_is_googles_format_readable_by_its_owner_only(server, key_file):
    key = json.loads(key_file.read_text())
    assert key["type"] == "service_account"
    assert key["token_uri"] == f"{server['url']}token"
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert key["client_email"].endswith(".iam.gserviceaccount.com")
    assert len(key["private_key_id"]) == 40 and len(key["client_id"]) == 21
    assert {"project_id", "auth_uri", "universe_domain"} <= set(key)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_drive_resource_signs_in_with_the_key_and_works(server, key_file, tmp_path):
    drive = DriveResource(api_url=server["url"], service_account_file=str(key_file),
                          num_retries=0)
    folder = drive.create_folder("Signed in", "root", {"via": "service-account"})
    data = tmp_path / "note.txt"
    data.write_bytes(b"written with a service account\n")
    made = drive.upload_file(data, "note.txt", folder["id"], mime_type="text/plain")
    assert [f["id"] for f in drive.list_files(f"'{folder['id']}' in parents")] == [made["id"]]
    assert drive.download_file(made["id"], tmp_path / "back.txt").read_bytes() == \
        data.read_bytes()
    # Nor did the sign-in start google-auth's Regional Access Boundary lookup, which would send
    # the local token to Google's IAM Credentials API.
    assert not [t for t in threading.enumerate() if "RegionalAccessBoundary" in type(t).__name__]
    # The key wins over a (here wrong) static token: it is the production path being run.
    both = DriveResource(api_url=server["url"], token="not-the-token",
                         service_account_file=str(key_file))
    assert both.get_file(folder["id"])["name"] == "Signed in"


def test_the_minted_token_opens_the_api_but_not_admin(server, key_file):
    credentials = service_account.Credentials.from_service_account_file(
        str(key_file), scopes=[DRIVE_SCOPE])
    credentials.refresh(google_auth_httplib2.Request(httplib2.Http()))
    assert credentials.token and credentials.expiry
    assert get_status(server, "/drive/v3/files", credentials.token) == 200
    assert get_status(server, "/drive/v3/files", credentials.token + "x") == 401
    assert get_status(server, "/_admin/health", credentials.token) == 401
    assert get_status(server, "/_admin/health", server["token"]) == 200


def test_a_key_the_server_never_saw_is_refused_with_a_drive_error(server, key_file, tmp_path):
    # Same account, a key that was never registered (as after a key is deleted on Google).
    unregistered = tmp_path / "unregistered.json"
    write_key_file(unregistered, server["url"])
    drive = DriveResource(api_url=server["url"], service_account_file=str(unregistered))
    with pytest.raises(DriveError) as raised:
        drive.get_file("root")
    error = raised.value
    assert (error.status, error.reason, error.api_message) == (
        400, "invalid_grant", "Invalid JWT Signature.")
    assert str(error).startswith("Drive sign-in as credflow-drive@credflow-local.iam."
                                 f"gserviceaccount.com at {server['url']}token failed: HTTP 400")
    # Another account altogether.
    stranger = tmp_path / "stranger.json"
    write_key_file(stranger, server["url"], account="stranger")
    with pytest.raises(DriveError, match="invalid_grant: Invalid grant: account not found"):
        DriveResource(api_url=server["url"], service_account_file=str(stranger)).get_file("root")


def test_a_key_file_with_the_wrong_private_half_is_refused(server, key_file, tmp_path):
    other = tmp_path / "other.json"
    write_key_file(other, server["url"])
    forged = json.loads(key_file.read_text())
    forged["private_key"] = json.loads(other.read_text())["private_key"]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    drive = DriveResource(api_url=server["url"], service_account_file=str(tmp_path / "forged.json"))
    with pytest.raises(DriveError, match="HTTP 400 invalid_grant: Invalid JWT Signature"):
        drive.list_files("trashed = false").__next__()


def test_a_tampered_token_uri_is_refused(server, key_file, tmp_path):
    key = json.loads(key_file.read_text())
    # Another Drive server, which never registered this key.
    elsewhere = start(tmp_path / "elsewhere", token="other-token")
    try:
        key["token_uri"] = f"{elsewhere['url']}token"
        (tmp_path / "elsewhere.json").write_text(json.dumps(key))
        drive = DriveResource(api_url=server["url"],
                              service_account_file=str(tmp_path / "elsewhere.json"))
        with pytest.raises(DriveError, match=f"at {elsewhere['url']}token failed: HTTP 400 "
                           "invalid_grant: Invalid grant: account not found"):
            drive.get_file("root")
    finally:
        stop_pid(elsewhere["pid"])
    # A URL on the right server that is not its token endpoint.
    key["token_uri"] = f"{server['url']}drive/v3/files"
    (tmp_path / "api.json").write_text(json.dumps(key))
    drive = DriveResource(api_url=server["url"], service_account_file=str(tmp_path / "api.json"))
    with pytest.raises(DriveError, match="HTTP 401 authError: Login Required"):
        drive.get_file("root")


def test_unreadable_key_files_are_drive_errors(server, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    for path in (tmp_path / "broken.json", tmp_path / "missing.json"):
        drive = DriveResource(api_url=server["url"], service_account_file=str(path))
        with pytest.raises(DriveError, match=f"Drive read service-account key {path} failed"):
            drive.get_file("root")


def test_the_token_endpoint_answers_as_google_does(server, key_file):
    ok, body = token_request(server, sign(key_file))
    assert ok == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    # The key file's own token_uri is an accepted audience too (google-auth sends Google's).
    assert token_request(server, sign(key_file, aud=f"{server['url']}token"))[0] == 200
    now = int(time.time())
    short_lived = "Invalid JWT: Token must be a short-lived token (60 minutes)"
    for assertion, status, error, description in [
        (sign(key_file, iat=now - 7200, exp=now - 3600), 400, "invalid_grant", short_lived),
        (sign(key_file, exp=now + 7200), 400, "invalid_grant", short_lived),
        (sign(key_file, aud="https://example.com/token"), 400, "invalid_grant",
         "Invalid JWT: Failed audience check."),
        (sign(key_file, scope="https://www.googleapis.com/auth/drive.readonly"), 400,
         "invalid_scope", "Invalid OAuth scope"),
        (sign(key_file, iss="nobody@example.iam.gserviceaccount.com"), 400, "invalid_grant",
         "Invalid grant: account not found"),
        (sign(key_file)[:-8] + "AAAAAAAA", 400, "invalid_grant", "Invalid JWT Signature."),
        ("not-a-jwt", 400, "invalid_grant", "Invalid JWT"),
        ("", 400, "invalid_request", "Missing required parameter: assertion"),
    ]:
        answer = token_request(server, assertion)
        assert answer[0] == status and answer[1]["error"] == error, answer
        assert answer[1]["error_description"].startswith(description), answer
        assert "access_token" not in answer[1]
    answer = token_request(server, sign(key_file), grant_type="client_credentials")
    assert answer[1]["error"] == "unsupported_grant_type"


def test_registering_keys_needs_the_server_token_and_a_real_public_key(server, key_file):
    body = json.dumps({"client_email": "x@y.iam.gserviceaccount.com", "private_key_id": "k1",
                       "public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"})
    headers = {"Content-Type": "application/json"}
    assert post(server, "/_admin/service_accounts", body.encode(), headers)[0] == 401
    status, answer = post(server, "/_admin/service_accounts", body.encode(),
                          {**headers, "Authorization": f"Bearer {server['token']}"})
    assert status == 400 and "PEM-encoded public key" in answer["error"]["message"]
    with pytest.raises(Exception, match="401"):
        register_key_file(key_file, server["url"], "wrong-token")


def test_a_restart_signs_everyone_out_and_google_auth_signs_in_again(tmp_path):
    token = "restart-token"
    info = start(tmp_path / "home", token=token)
    try:
        create_key_file(tmp_path / "key.json", info["url"], token)
        drive = DriveResource(api_url=info["url"], service_account_file=str(tmp_path / "key.json"))
        folder = drive.create_folder("before the restart", "root")
    finally:
        stop_pid(info["pid"])
    info = start(tmp_path / "home", port=info["port"], token=token)
    try:
        # Same client: its token died with the server, so the 401 makes google-auth sign in
        # again, with the key the server kept.
        assert drive.get_file(folder["id"])["name"] == "before the restart"
        log = (tmp_path / "home" / "logs" / "drive.log").read_text()
        assert log.count('"POST /token HTTP/1.1" 200') == 2
    finally:
        stop_pid(info["pid"])


def test_no_secret_reaches_the_server_log(server, key_file):
    key = json.loads(key_file.read_text())
    assertion = sign(key_file)
    minted = token_request(server, assertion)[1]["access_token"]
    DriveResource(api_url=server["url"], service_account_file=str(key_file)).get_file("root")
    log = (server["home"] / "logs" / "drive.log").read_text()
    assert '"POST /token HTTP/1.1" 200' in log  # the log is there, and saw the sign-ins
    private_lines = [line for line in key["private_key"].splitlines() if "-----" not in line]
    assert not any(line in log for line in private_lines)
    for secret in (minted, assertion, assertion.split(".")[2], server["token"]):
        assert secret not in log
