"""E-mail: the mail resource sends through the local stack's SMTP server, `credflow local mail`
lists what it received, and a delivery problem is one log line and False, never an exception.

Every server here is a real SMTP server on loopback (the stack's, or aiosmtpd started by a test
to refuse a recipient or a sign-in); smtplib is the client, as in production.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import subprocess
import sys
import uuid
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import dagster as dg
import pytest

from credflow_assets.config import load_config
from credflow_assets.local.process import LOOPBACK, free_port
from credflow_assets.resources.from_config import build_resources
from credflow_assets.resources.mail import MailResource
from credflow_assets_tests.conftest import DEFAULT_CONFIG

BIN = Path(sys.executable).parent
# The strict server below signs in without TLS (it has no certificate; loopback only).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
PASSWORD = "pw-7f3a-never-in-a-log"


def credflow(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(home), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG),
           # The command runs the code under test (a worktree's, on PYTHONPATH), not the
           # checkout the virtualenv's editable install points at.
           **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}}
    return subprocess.run([str(BIN / "credflow"), *args], env=env, capture_output=True,
                          text=True, check=check, timeout=300)


def listed(home: Path, *args: str) -> list[dict]:
    return json.loads(credflow(home, "local", "mail", "--json", *args).stdout)


@contextmanager
def mail_resource():
    """The `mail` resource as a run gets it: built from the default config, env resolved."""
    with dg.build_resources({"mail": build_resources(load_config(DEFAULT_CONFIG))["mail"]}) as r:
        yield r.mail


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.org"


def mail_log_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "credflow.mail"]


def test_a_message_sent_by_the_resource_is_listed_with_every_field(local_stack):
    to = unique("therapist")
    subject = f"Your upload failed {uuid.uuid4().hex[:6]}"
    body = "Dear therapist,\n\nyour file licence.heic could not be read.\nPlease upload it again.\n"
    with mail_resource() as mail:
        assert mail.send(to, subject + "\nBcc: injected@example.org", body,
                         reply_to="success-team@credflow.local",
                         headers={"X-Credflow-Flow": "therapists"}) is True

    [message] = listed(local_stack.home, "--to", to)
    assert message["envelope_to"] == [to] and message["to"] == [to]
    assert message["envelope_from"] == "credflow@credflow.local"
    assert message["from"] == "credflow <credflow@credflow.local>"
    # A line break in a subject (a file's name) stays in the subject: no header is added.
    assert message["subject"] == subject + " Bcc: injected@example.org"
    assert "Bcc" not in message["headers"]
    assert message["text"] == body
    assert message["reply_to"] == "success-team@credflow.local"
    assert message["headers"]["X-Credflow-Flow"] == ["therapists"]
    assert message["message_id"].endswith("@credflow.local>") and message["date"]
    assert message["attachments"] == []
    assert Path(message["path"]).read_bytes().startswith(b"From: credflow")

    text = credflow(local_stack.home, "local", "mail", "--to", to).stdout
    assert f"from credflow@credflow.local  to {to}" in text
    assert f"subject: {subject}" in text
    assert "  | Dear therapist," in text and "  | your file licence.heic could not be read." in text
    assert "1 message(s) to" in text


def test_to_filters_by_recipient_and_the_listing_is_newest_last(local_stack):
    first, second = unique("first"), unique("second")
    with mail_resource() as mail:
        assert mail.send(first, "one", "first message\n")
        assert mail.send([second, first], "two", "second message\n")
        assert mail.send(second, "three", "third message\n")

    assert [m["subject"] for m in listed(local_stack.home, "--to", first)] == ["one", "two"]
    # Case does not matter, and a display name is accepted.
    assert [m["subject"] for m in listed(local_stack.home, "--to",
                                         f"Second <{second.upper()}>")] == ["two", "three"]
    everything = listed(local_stack.home)
    ours = [m["subject"] for m in everything if {first, second} & set(m["envelope_to"])]
    assert ours == ["one", "two", "three"]
    assert [m["received_at"] for m in everything] == sorted(m["received_at"] for m in everything)
    nobody = credflow(local_stack.home, "local", "mail", "--to", unique("nobody")).stdout
    assert nobody.startswith("no messages to nobody-")


def test_bcc_recipients_and_attachment_names_come_from_the_envelope_and_the_parts(local_stack):
    """A message from any SMTP client: attachments are listed by name, Bcc by the envelope."""
    to, hidden = unique("to"), unique("bcc")
    message = EmailMessage()
    message["From"] = "scanner@example.org"
    message["To"] = to
    message["Subject"] = "Scans"
    message.set_content("Two scans attached.\n")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf",
                           filename="licence.pdf")
    message.add_attachment(b"a,b\n", maintype="text", subtype="csv", filename="roster.csv")
    port = local_stack.services["smtp"]["port"]
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
        smtp.send_message(message, to_addrs=[to, hidden])

    [stored] = listed(local_stack.home, "--to", hidden)
    assert stored["to"] == [to] and stored["envelope_to"] == [to, hidden]
    assert stored["attachments"] == ["licence.pdf", "roster.csv"]
    assert stored["text"] == "Two scans attached.\n"
    text = credflow(local_stack.home, "local", "mail", "--to", hidden).stdout
    assert "attachments: licence.pdf, roster.csv" in text


def test_messages_survive_a_restart_of_the_stack(tmp_path, local_stack):
    home = tmp_path / "home"
    credflow(home, "local", "up")
    try:
        status = json.loads(credflow(home, "local", "status", "--json").stdout)
        assert status["smtp"]["running"]
        before = MailResource(host=LOOPBACK, port=status["smtp"]["port"],
                              sender="credflow@credflow.local", starttls=False)
        assert before.send("ann@example.org", "before the restart", "kept\n")

        assert "smtp" in credflow(home, "local", "down").stdout
        # The mailbox is files: it is listed while the server is down.
        assert [m["subject"] for m in listed(home)] == ["before the restart"]

        credflow(home, "local", "up")
        port = json.loads(credflow(home, "local", "status", "--json").stdout)["smtp"]["port"]
        after = MailResource(host=LOOPBACK, port=port, sender="credflow@credflow.local",
                             starttls=False)
        assert after.send("ann@example.org", "after the restart", "new\n")
        assert [m["subject"] for m in listed(home, "--to", "ann@example.org")] == [
            "before the restart", "after the restart"]
    finally:
        credflow(home, "local", "down", check=False)
    assert not list((home / "mail" / "tmp").iterdir())


def assert_one_clean_line(caplog, *, names: str, says: str) -> str:
    [record] = mail_log_lines(caplog)
    line = record.getMessage()
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "\n" not in line and "Traceback" not in caplog.text
    assert names in line and says in line, line
    assert PASSWORD not in caplog.text and "the body of the message" not in caplog.text
    assert "Error" not in line and "Exception" not in line, line  # no exception class names
    return line


def test_an_unreachable_server_is_one_log_line_and_false(caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    port = free_port()  # nothing listens there
    mail = MailResource(host=LOOPBACK, port=port, sender="credflow@credflow.local",
                        username="credflow", password=PASSWORD, starttls=True, timeout_seconds=5)
    assert mail.send("ann@example.org", "Upload failed", "the body of the message") is False
    line = assert_one_clean_line(caplog, names="ann@example.org", says="connection refused")
    assert f"{LOOPBACK}:{port}" in line


def test_a_server_that_never_answers_times_out(caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    with socket.socket() as silent:  # accepts connections (the backlog), never says a word
        silent.bind((LOOPBACK, 0))
        silent.listen(1)
        mail = MailResource(host=LOOPBACK, port=silent.getsockname()[1],
                            sender="credflow@credflow.local", starttls=False, timeout_seconds=1)
        assert mail.send("ann@example.org", "s", "the body of the message") is False
    assert_one_clean_line(caplog, names="ann@example.org", says="no answer from")
    assert "within 1s while connecting" in caplog.text


def test_an_unknown_host_is_named(caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    mail = MailResource(host="smtp.invalid", port=587, sender="credflow@credflow.local")
    assert mail.send("ann@example.org", "s", "the body of the message") is False
    assert_one_clean_line(caplog, names="ann@example.org", says="smtp.invalid cannot be resolved")


def test_a_server_without_starttls_is_refused_when_tls_is_required(local_stack, caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    mail = MailResource(host=LOOPBACK, port=local_stack.services["smtp"]["port"],
                        sender="credflow@credflow.local", starttls=True)
    to = unique("tls")
    assert mail.send(to, "s", "the body of the message") is False
    assert_one_clean_line(caplog, names=to, says="does not offer STARTTLS")
    assert listed(local_stack.home, "--to", to) == []


@pytest.fixture
def strict_smtp_server():
    """A real SMTP server (aiosmtpd) that requires a sign-in and refuses unknown recipients."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    received = []

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if not address.endswith("@known.example.org"):
                return "550 5.1.1 <" + address + ">: no such mailbox here"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"credflow" and auth_data.password == b"right-password"
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    controller = Controller(Handler(), hostname=LOOPBACK, port=free_port(),
                            server_hostname="strict.example.org", authenticator=authenticator,
                            auth_required=True, auth_require_tls=False)
    controller.start()
    try:
        yield controller.port, received
    finally:
        controller.stop()


def strict_mail(port: int, password: str) -> MailResource:
    return MailResource(host=LOOPBACK, port=port, sender="credflow@known.example.org",
                        username="credflow", password=password, starttls=False,
                        timeout_seconds=10)


def test_a_refused_recipient_is_one_log_line_and_false(strict_smtp_server, caplog):
    caplog.set_level(logging.WARNING, logger="credflow.mail")
    port, received = strict_smtp_server
    mail = strict_mail(port, "right-password")
    assert mail.send("stranger@elsewhere.org", "s", "the body of the message") is False
    assert_one_clean_line(caplog, names="stranger@elsewhere.org",
                          says="refused the recipient (550 5.1.1")
    assert received == []

    caplog.clear()
    # Some recipients refused: the others get it, and the refused ones are named.
    assert mail.send(["ann@known.example.org", "bob@elsewhere.org"], "s", "the body") is False
    line = assert_one_clean_line(caplog, names="bob@elsewhere.org", says="refused the recipient")
    assert "ann@known" not in line
    assert [envelope.rcpt_tos for envelope in received] == [["ann@known.example.org"]]

    caplog.clear()
    assert mail.send("ann@known.example.org", "s", "the body") is True
    assert mail_log_lines(caplog) == []


def test_a_refused_sign_in_never_logs_the_password(strict_smtp_server, caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    port, received = strict_smtp_server
    assert strict_mail(port, PASSWORD).send("ann@known.example.org", "s",
                                            "the body of the message") is False
    assert_one_clean_line(caplog, names="ann@known.example.org",
                          says="refused the sign-in as credflow (535")
    assert received == []


def test_without_a_mail_section_the_resource_is_disabled(caplog):
    caplog.set_level(logging.INFO, logger="credflow.mail")
    mail = MailResource()
    assert not mail.enabled
    assert mail.send("ann@example.org", "s", "the body of the message") is False
    [record] = mail_log_lines(caplog)
    assert "not sent: no mail server is configured" in record.getMessage()


def test_a_stack_started_before_the_smtp_server_still_gives_its_environment(tmp_path):
    """`credflow sync` against a stack from before this server: no SMTP variables, no crash;
    the next `credflow local up` starts the server."""
    from credflow_assets.local.stack import StackState, environment

    state = StackState(home=tmp_path, config_path=DEFAULT_CONFIG, drive_token="t", services={
        "moto": {"pid": 1, "port": 1, "endpoint_url": "http://127.0.0.1:1"},
        "drive": {"pid": 2, "port": 2, "url": "http://127.0.0.1:2/"},
        "sshd": {"pid": 3, "port": 3, "host": LOOPBACK, "user": "u", "key_file": "k",
                 "known_hosts": "h", "root": "r"},
    })
    variables = environment(state, load_config(DEFAULT_CONFIG))
    assert variables["CREDFLOW_SFTP_PORT"] == "3" and "CREDFLOW_SMTP_PORT" not in variables
