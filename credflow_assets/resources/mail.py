"""E-mail through SMTP (smtplib): the local stack's server, or a relay in production.

`send` never raises for a delivery problem (an unreachable server, a refused sign-in, sender or
recipient): whoever sends mail is usually telling someone about a failure, and a mail server
that is down must not turn it into a second one. It logs one line naming the recipients and
the problem (never the password or the body) and returns False.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Optional, Union

import dagster as dg

# Under `credflow`, which the Dagster instance captures: the line reaches the run's event log.
logger = logging.getLogger("credflow.mail")

_LINE_BREAKS = re.compile(r"[\r\n]+\s*")


class MailResource(dg.ConfigurableResource):
    """Sends plain-text e-mail from `sender` through the SMTP server at `host`:`port`.

    Without a `host` (no `mail:` section in the config) it is disabled: `send` logs that the
    message was not sent and returns False.
    """

    host: Optional[str] = None
    port: int = 587
    sender: Optional[str] = None
    username: Optional[str] = None
    # A secret: given as an EnvVar (the config's `{env: NAME}`), never written in a log line.
    password: Optional[str] = None
    # Upgrade to TLS (STARTTLS, certificate verified) before signing in or sending.
    starttls: bool = True
    timeout_seconds: float = 30

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.sender)

    def send(
        self,
        to: Union[str, Sequence[str]],
        subject: str,
        text: str,
        *,
        reply_to: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> bool:
        """Send one message to `to` (an address or several); True once the server accepted it
        for every recipient. Never raises for a delivery problem: logs it and returns False."""
        recipients = [to] if isinstance(to, str) else list(to)
        who = _one_line(", ".join(recipients)) or "(no recipient)"
        if not self.enabled:
            logger.warning(f"mail to {who} not sent: no mail server is configured "
                           "(the config has no `mail:` section)")
            return False
        envelope_to = _bare(recipients)
        if not envelope_to:
            logger.error(f"mail to {who} not sent: no e-mail address in it")
            return False
        message = self.build_message(recipients, subject, text, reply_to=reply_to,
                                     headers=headers)
        step, smtp = "connecting", None
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds)
            if self.starttls:
                step = "starting TLS"
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                step = "signing in"
                smtp.login(self.username, self.password or "")
            step = "sending"
            refused = smtp.send_message(message, to_addrs=envelope_to)
        except (smtplib.SMTPException, OSError) as error:
            self._log_failure(who, self._problem(error, step))
            return False
        finally:
            if smtp is not None:
                _quit(smtp)
        if refused:
            self._log_failure(_one_line(", ".join(refused)), "the server refused the recipient ("
                              + "; ".join(_reply(*reply) for reply in refused.values()) + ")")
            return False
        logger.info(f"mail to {who} sent through {self.host}:{self.port}")
        return True

    def build_message(
        self,
        recipients: Sequence[str],
        subject: str,
        text: str,
        *,
        reply_to: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> EmailMessage:
        """The message `send` sends. Header values are made single-line: a subject built from
        a file's name must not fail the message, nor add headers of its own."""
        message = EmailMessage()
        message["From"] = _one_line(self.sender or "")
        message["To"] = ", ".join(_one_line(address) for address in recipients)
        message["Subject"] = _one_line(subject)
        message["Date"] = formatdate(usegmt=True)
        domain = next(iter(_bare([self.sender or ""])), "").rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        if reply_to:
            message["Reply-To"] = _one_line(reply_to)
        for name, value in (headers or {}).items():
            message[_one_line(name)] = _one_line(value)
        message.set_content(text)
        return message

    def _problem(self, error: BaseException, step: str) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            return "the server refused the recipient (" + "; ".join(
                _reply(*reply) for reply in error.recipients.values()) + ")"
        if isinstance(error, smtplib.SMTPSenderRefused):
            return (f"the server refused the sender {_one_line(str(error.sender))} "
                    f"({_reply(error.smtp_code, error.smtp_error)})")
        if isinstance(error, smtplib.SMTPAuthenticationError):
            return (f"the server at {where} refused the sign-in as {self.username} "
                    f"({_reply(error.smtp_code, error.smtp_error)})")
        if isinstance(error, smtplib.SMTPDataError):
            return f"the server refused the message ({_reply(error.smtp_code, error.smtp_error)})"
        if isinstance(error, smtplib.SMTPNotSupportedError):
            offer = {"starting TLS": "STARTTLS", "signing in": "sign-in (AUTH)",
                     "sending": "non-ASCII addresses (SMTPUTF8)"}.get(step, step)
            return f"the server at {where} does not offer {offer}"
        if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
            # smtplib reports a reply that never came as a disconnection caused by a timeout.
            return f"no answer from {where} within {self.timeout_seconds:g}s while {step}"
        if isinstance(error, smtplib.SMTPServerDisconnected):
            return f"the server at {where} closed the connection while {step}"
        if isinstance(error, smtplib.SMTPResponseException):
            return (f"the server at {where} answered {_reply(error.smtp_code, error.smtp_error)} "
                    f"while {step}")
        if isinstance(error, ConnectionRefusedError):
            return f"nothing accepts connections at {where} (connection refused)"
        if isinstance(error, socket.gaierror):
            return f"the SMTP host {self.host} cannot be resolved ({error.strerror})"
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"the TLS certificate of {where} is not trusted ({error.verify_message})"
        if isinstance(error, ssl.SSLError):
            return f"TLS with {where} failed ({error.reason or error.strerror})"
        if isinstance(error, OSError):
            return f"{step} to {where} failed ({error.strerror or error})"
        return f"{step} with {where} failed ({error})"

    def _log_failure(self, who: str, problem: str) -> None:
        line = f"mail to {who} not delivered: {problem}"
        if self.password:  # a server may echo what it was sent; a password never reaches a log
            line = line.replace(self.password, "****")
        logger.error(line)


def _quit(smtp: smtplib.SMTP) -> None:
    """Say goodbye; the message's fate was settled before, so a failed QUIT changes nothing."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _bare(addresses: Sequence[str]) -> list[str]:
    """`Name <local@domain>` → `local@domain`, for the envelope (a string may hold several)."""
    return [address for _, address in getaddresses(list(addresses)) if address]


def _one_line(value: str) -> str:
    return _LINE_BREAKS.sub(" ", str(value)).strip()


def _reply(code: int, text: Union[bytes, str, None]) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {_one_line(text or '')}".strip()
