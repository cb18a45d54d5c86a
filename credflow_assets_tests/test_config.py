"""The config loader: the shipped files load, bad files are refused naming the file and field."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from credflow_assets.config import ConfigError, load_config, to_public_dict

REPO = Path(__file__).resolve().parents[1]
GOOD_MINIMAL = """
buckets: {signup: s, provider_data: p, adhoc: a, logs: l, renditions: r}
events:
  signup_uploads: {bucket: signup, queue: q1}
  staging_uploads: {bucket: adhoc, prefix: staging/, queue: q2}
drive: {mpf_root_folder_id: root, token: {env: DRIVE_TOKEN}}
sql: {directory_url: "sqlite:///d.db", tables_url: "sqlite:///t.db"}
gpg: {homedir: /tmp/g, passphrase: {env: GPG_PASS}}
staged_tables: {glue_database: db}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credflow.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["credflow.yaml", "deploy/credflow.production.yaml"])
def test_shipped_config_files_load(name):
    config = load_config(REPO / name)
    assert config.drive.mpf_root_folder_id


def test_default_config_has_the_three_feeds_of_the_source_document():
    config = load_config(REPO / "credflow.yaml")
    assert {feed.name: feed.id_column for feed in config.feeds} == {
        "contact_tracing": "ctas_id", "nsss": "nss_id", "spl": "spl_id"
    }


def test_a_wrong_type_is_refused_naming_file_and_field(tmp_path):
    path = write(tmp_path, GOOD_MINIMAL + """
providers:
  - name: acme
    folder: acme
    remote_dir: out
    sftp: {host: h, port: twenty-two, username: u, private_key_file: {env: K}, known_hosts_file: k}
""")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert "providers[0].sftp.port" in message
    assert "valid integer" in message


def test_a_literal_secret_is_refused_and_not_echoed(tmp_path):
    path = write(tmp_path, GOOD_MINIMAL.replace("{env: GPG_PASS}", "hunter2-very-secret"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "gpg.passphrase" in message
    assert "{env: VARIABLE_NAME}" in message
    assert "hunter2" not in message


def test_an_unpinned_sftp_host_key_is_refused(tmp_path):
    path = write(tmp_path, GOOD_MINIMAL + """
providers:
  - name: acme
    folder: acme
    sftp: {host: h, username: u, private_key_file: {env: K}}
""")
    with pytest.raises(ConfigError, match=r"providers\[0\]\.sftp: .*host key must be pinned"):
        load_config(path)


def test_unknown_fields_missing_fields_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"buckets\.logs: Field required"):
        load_config(write(tmp_path, GOOD_MINIMAL.replace(", logs: l", "")))
    with pytest.raises(ConfigError, match=r"drive\.mpf_root: Extra inputs are not permitted"):
        load_config(write(tmp_path, GOOD_MINIMAL.replace("mpf_root_folder_id: root",
                                                         "mpf_root_folder_id: r, mpf_root: x")))
    with pytest.raises(ConfigError, match=r"credflow\.yaml:\d+:\d+: not valid YAML"):
        load_config(write(tmp_path, GOOD_MINIMAL + "feeds: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_duplicate_names_and_unknown_bucket_keys_are_refused(tmp_path):
    feeds = """
feeds:
  - {name: a, inbound_folder_id: i, outbound_folder_id: o, schema: S, id_column: id, table: t}
  - {name: a, inbound_folder_id: i2, outbound_folder_id: o2, schema: S, id_column: id, table: t2}
"""
    with pytest.raises(ConfigError, match=r"feeds: names must be unique, repeated: \['a'\]"):
        load_config(write(tmp_path, GOOD_MINIMAL + feeds))
    with pytest.raises(ConfigError, match=r"events\.signup_uploads\.bucket: 'nope' is not one of"):
        load_config(write(tmp_path, GOOD_MINIMAL.replace("{bucket: signup", "{bucket: nope")))


def test_public_view_masks_secrets_and_shows_env_settings(monkeypatch):
    monkeypatch.setenv("CREDFLOW_GPG_PASSPHRASE", "s3cr3t-passphrase")
    monkeypatch.setenv("CREDFLOW_DRIVE_URL", "http://127.0.0.1:1234/")
    public = to_public_dict(load_config(REPO / "credflow.yaml"))
    assert public["gpg"]["passphrase"] == {"env": "CREDFLOW_GPG_PASSPHRASE", "set": True,
                                           "value": "****"}
    assert public["drive"]["api_url"] == {"env": "CREDFLOW_DRIVE_URL",
                                          "value": "http://127.0.0.1:1234/"}
    assert "s3cr3t-passphrase" not in json.dumps(public)


def test_config_show_json_masks_secrets(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "CREDFLOW_HOME": str(tmp_path / "home"),
           "CREDFLOW_DRIVE_TOKEN": "tok-very-secret", "CREDFLOW_GPG_PASSPHRASE": "pass-secret",
           # The command runs the code under test (a worktree's, on PYTHONPATH), not the
           # checkout the virtualenv's editable install points at.
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("credflow")), "--config", str(REPO / "credflow.yaml"),
         "config", "show", "--json"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    public = json.loads(shown)
    assert public["config_file"] == str(REPO / "credflow.yaml")
    assert public["drive"]["token"]["value"] == "****"
    assert "very-secret" not in shown and "pass-secret" not in shown


def test_config_show_names_the_bad_file(tmp_path):
    path = write(tmp_path, "buckets: 3\n")
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("credflow")), "--config", str(path), "config", "show"],
        capture_output=True, text=True,
    )
    assert shown.returncode != 0
    assert str(path) in shown.stderr and "buckets" in shown.stderr


MAIL = """
mail:
  smtp_host: {env: SMTP_HOST}
  smtp_port: {env: SMTP_PORT}
  sender: "credflow <credflow@example.org>"
  username: {env: SMTP_USER}
  password: {env: SMTP_PASSWORD}
"""


def test_without_a_mail_section_the_config_loads_and_mail_is_disabled(tmp_path):
    from credflow_assets.resources.from_config import build_resources

    config = load_config(write(tmp_path, GOOD_MINIMAL))
    assert config.mail is None
    assert config.notifications.success_team is None
    assert config.notifications.staged_uploaders == {}
    assert not build_resources(config)["mail"].enabled


def test_the_mail_section_and_the_notification_addresses_load(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, GOOD_MINIMAL + MAIL + """
notifications:
  success_team: "Success team <success@example.org>"
  staged_uploaders:
    "AWS:AIDAEXAMPLE1": analyst@example.org
    "arn:aws:iam::123456789012:user/jo": jo@example.org
"""))
    assert config.mail.starttls is True  # the production default
    assert config.mail.smtp_port.env == "SMTP_PORT" and config.mail.timeout_seconds == 30
    assert config.notifications.success_team == "Success team <success@example.org>"
    assert config.notifications.staged_uploaders["AWS:AIDAEXAMPLE1"] == "analyst@example.org"

    monkeypatch.setenv("SMTP_PASSWORD", "smtp-pass-very-secret")
    public = to_public_dict(config)
    assert public["mail"]["password"] == {"env": "SMTP_PASSWORD", "set": True, "value": "****"}
    assert "very-secret" not in json.dumps(public)


def test_the_local_config_points_at_the_local_smtp_server():
    config = load_config(REPO / "credflow.yaml")
    assert (config.mail.smtp_host.env, config.mail.smtp_port.env) == (
        "CREDFLOW_SMTP_HOST", "CREDFLOW_SMTP_PORT")
    assert config.mail.starttls is False and config.mail.username is None
    assert config.notifications.success_team


@pytest.mark.parametrize("change, location, says", [
    (("password: {env: SMTP_PASSWORD}", "password: hunter2-very-secret"),
     "mail.password", "{env: VARIABLE_NAME}"),
    (("credflow <credflow@example.org>", "credflow at example.org"),
     "mail.sender", "'credflow at example.org' is not an e-mail address"),
    (("smtp_port: {env: SMTP_PORT}", "smtp_port: submission"),
     "mail.smtp_port", "valid integer"),
    (("  username: {env: SMTP_USER}\n", ""),
     "mail", "set both username and password, or neither"),
    (("  username:", "  starttls: false\n  username:"),
     "mail", "only sent over TLS: set starttls: true"),
    (("  sender:", "  smtp_server: x\n  sender:"),
     "mail.smtp_server", "Extra inputs are not permitted"),
])
def test_a_bad_mail_section_is_refused_naming_file_and_field(tmp_path, change, location, says):
    path = write(tmp_path, GOOD_MINIMAL + MAIL.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert f"  {location}: " in message and says in message, message
    assert "hunter2" not in message


@pytest.mark.parametrize("notifications, location, says", [
    ("{success_team: success-team}", "notifications.success_team",
     "'success-team' is not an e-mail address"),
    ("{success_team: 'a@example.org, b@example.org'}", "notifications.success_team",
     "is not an e-mail address"),
    ("{staged_uploaders: {'AWS:AIDA1': not-an-address}}", "notifications.staged_uploaders",
     "AWS:AIDA1: 'not-an-address' is not an e-mail address"),
    ("{staged_uploaders: [a@example.org]}", "notifications.staged_uploaders",
     "valid dictionary"),
])
def test_bad_notification_addresses_are_refused(tmp_path, notifications, location, says):
    path = write(tmp_path, GOOD_MINIMAL + f"notifications: {notifications}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    assert f"  {location}: " in message and says in message, message
