"""`credflow local up/status/env/down`: a second stack beside the session's, reached by real tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from credflow_assets_tests.conftest import DEFAULT_CONFIG, REPO

BIN = Path(sys.executable).parent
EXPECTED_VARIABLES = {
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
    "CREDFLOW_DRIVE_URL", "CREDFLOW_SFTP_HOST", "CREDFLOW_SFTP_PORT", "CREDFLOW_SFTP_USER",
    "CREDFLOW_SFTP_KEY_FILE", "CREDFLOW_SFTP_KNOWN_HOSTS", "CREDFLOW_DRIVE_TOKEN", "DAGSTER_HOME",
    "CREDFLOW_CONFIG", "CREDFLOW_SMTP_HOST", "CREDFLOW_SMTP_PORT",
}


def credflow(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(home), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG),
           # The command runs the code under test (a worktree's, on PYTHONPATH), not the
           # checkout the virtualenv's editable install points at.
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    return subprocess.run([str(BIN / "credflow"), *args], env=env, capture_output=True,
                          text=True, check=check, cwd=home.parent)


def shell(script: str, variables: dict[str, str]) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **variables}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def second_stack(tmp_path_factory, local_stack):
    """A stack of its own, running at the same time as the session's (two homes, two stacks)."""
    home = tmp_path_factory.mktemp("second") / "home"
    credflow(home, "local", "up")
    try:
        exports = credflow(home, "local", "env").stdout
        yield home, exports
    finally:
        credflow(home, "local", "down", check=False)


def parse_exports(exports: str) -> dict[str, str]:
    variables = {}
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        variables[name] = subprocess.run(["bash", "-c", f"printf %s {value}"],
                                         capture_output=True, text=True).stdout
    return variables


def test_env_exports_every_documented_variable(second_stack):
    _, exports = second_stack
    variables = parse_exports(exports)
    assert EXPECTED_VARIABLES <= set(variables)
    assert variables["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert variables["CREDFLOW_DRIVE_URL"].startswith("http://127.0.0.1:")
    assert variables["CREDFLOW_SMTP_HOST"] == "127.0.0.1"
    assert int(variables["CREDFLOW_SMTP_PORT"]) > 0


def test_two_stacks_run_at_once_on_different_ports(second_stack, local_stack):
    home, exports = second_stack
    status = json.loads(credflow(home, "local", "status", "--json").stdout)
    assert all(service["running"] for service in status.values())
    ours = {service["port"] for service in status.values()}
    theirs = {service["port"] for service in local_stack.services.values()}
    assert not ours & theirs


def test_aws_cli_reaches_the_stack(second_stack):
    _, exports = second_stack
    listed = shell('aws --endpoint-url "$AWS_ENDPOINT_URL" s3 ls', parse_exports(exports))
    assert listed.returncode == 0, listed.stderr
    assert "credflow-signup" in listed.stdout and "credflow-adhoc" in listed.stdout


def test_openssh_sftp_reaches_the_stack(second_stack):
    home, exports = second_stack
    variables = parse_exports(exports)
    Path(variables["CREDFLOW_SFTP_ROOT"], "hello.txt").write_text("hello from the provider\n")
    script = textwrap.dedent("""
        echo 'ls -1' | sftp -b - -P "$CREDFLOW_SFTP_PORT" -i "$CREDFLOW_SFTP_KEY_FILE" \
          -o UserKnownHostsFile="$CREDFLOW_SFTP_KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
          -o BatchMode=yes "$CREDFLOW_SFTP_USER@$CREDFLOW_SFTP_HOST"
    """)
    listed = shell(script, variables)
    assert listed.returncode == 0, listed.stderr
    assert "hello.txt" in listed.stdout


def test_google_api_client_reaches_the_drive_server(second_stack):
    _, exports = second_stack
    script = textwrap.dedent(f"""
        "{sys.executable}" - <<'PY'
        import json, os
        from pathlib import Path
        import googleapiclient
        from google.oauth2.credentials import Credentials
        from googleapiclient.discovery import build_from_document
        url = os.environ["CREDFLOW_DRIVE_URL"]
        doc = json.loads((Path(googleapiclient.__file__).parent
                          / "discovery_cache/documents/drive.v3.json").read_text())
        doc["rootUrl"], doc["baseUrl"] = url, url + "drive/v3/"
        drive = build_from_document(doc, credentials=Credentials(os.environ["CREDFLOW_DRIVE_TOKEN"]))
        found = drive.files().list(q="'local-mpf-root' in parents or name contains 'Magically'",
                                   fields="files(id,name)").execute()
        print(json.dumps(found["files"]))
        PY
    """)
    listed = shell(script, parse_exports(exports))
    assert listed.returncode == 0, listed.stderr
    assert {"id": "local-mpf-root", "name": "Magically Processed Folders"} in json.loads(
        listed.stdout)


def test_up_is_idempotent_and_down_stops_everything(tmp_path, local_stack):
    home = tmp_path / "third"
    credflow(home, "local", "up")
    first = json.loads(credflow(home, "local", "status", "--json").stdout)
    credflow(home, "local", "up")
    again = json.loads(credflow(home, "local", "status", "--json").stdout)
    assert {n: s["pid"] for n, s in first.items()} == {n: s["pid"] for n, s in again.items()}

    assert "stopped" in credflow(home, "local", "down").stdout
    stopped = credflow(home, "local", "status", check=False)
    assert stopped.returncode == 1
    assert "running" not in stopped.stdout
    not_running = credflow(home, "local", "env", check=False)
    assert not_running.returncode != 0 and "credflow local up" in not_running.stderr


def test_definitions_validate(local_stack):
    validated = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ},
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Validation successful" in validated.stdout + validated.stderr
