"""The local SMTP server's mailbox: how a received message is stored, and `credflow local mail`.

Every message is two files in `HOME/mail/messages/`, named by when it arrived:
- `{id}.eml`, the message exactly as the client sent it (headers and body, RFC 5322);
- `{id}.json`, what the SMTP envelope said: `mail_from`, `rcpt_tos`, `received_at`, `peer`.

Both are written to `HOME/mail/tmp/` first and renamed into place, the `.eml` before the
`.json`, and the server answers 250 only after both: a message is in the mailbox exactly when
its `.json` is. A `.eml` without one was never acknowledged (the client sends it again); the
server removes such leftovers when it starts. Standard library only: listing needs no server.
"""

from __future__ import annotations

import email
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

MAIL_DIR = "mail"
# Lines of the text body `credflow local mail` shows for each message (--json has all of it).
PREVIEW_LINES = 3
PREVIEW_WIDTH = 100


class MailboxError(RuntimeError):
    """The mailbox holds a file that cannot be read; the message names it."""


def mail_dir(home: Path) -> Path:
    """The SMTP server's state directory: `messages/`, `tmp/`, its lock."""
    return Path(home) / MAIL_DIR


def messages_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "messages"


def tmp_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "tmp"


# --- storing (the server) -------------------------------------------------------------------


def store_message(
    state_dir: Path,
    *,
    mail_from: str,
    rcpt_tos: Iterable[str],
    content: bytes,
    peer: str | None = None,
    received_at: datetime | None = None,
) -> str:
    """Store one received message atomically; return its id."""
    received_at = (received_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    message_id = f"{received_at:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}"
    envelope = {
        "id": message_id,
        "received_at": received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "mail_from": mail_from,
        "rcpt_tos": list(rcpt_tos),
        "peer": peer,
        "size": len(content),
    }
    final, temporary = messages_dir(state_dir), tmp_dir(state_dir)
    final.mkdir(parents=True, exist_ok=True)
    temporary.mkdir(parents=True, exist_ok=True)
    _write_atomically(temporary / f"{message_id}.eml", final / f"{message_id}.eml", content)
    _write_atomically(temporary / f"{message_id}.json", final / f"{message_id}.json",
                      json.dumps(envelope, indent=2).encode())
    _fsync_directory(final)
    return message_id


def remove_unacknowledged(state_dir: Path) -> list[str]:
    """Remove what an interrupted store left: files in `tmp/`, `.eml`s without their `.json`.

    Only for the server, at start, holding the state directory's lock.
    """
    removed = []
    for leftover in sorted(tmp_dir(state_dir).glob("*")):
        leftover.unlink(missing_ok=True)
        removed.append(leftover.name)
    for eml in sorted(messages_dir(state_dir).glob("*.eml")):
        if not eml.with_suffix(".json").exists():
            eml.unlink(missing_ok=True)
            removed.append(eml.name)
    return removed


def _write_atomically(temporary: Path, final: Path, data: bytes) -> None:
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(final)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- reading (`credflow local mail`) --------------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    id: str
    received_at: str
    envelope_from: str
    envelope_to: list[str]
    from_: str
    to: list[str]
    cc: list[str]
    reply_to: str | None
    subject: str
    date: str | None
    message_id: str | None
    text: str
    attachments: list[str]
    headers: dict[str, list[str]]
    size: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        """Every field, in this order, `from_` written `from`."""
        return {("from" if name == "from_" else name): value
                for name, value in asdict(self).items()}


def read_messages(home: Path, *, to: str | None = None) -> list[StoredMessage]:
    """The messages in the mailbox under `home`, newest last; `to` keeps those whose envelope
    names that recipient (case-insensitive; `Name <address>` is accepted)."""
    directory = messages_dir(mail_dir(home))
    wanted = _address(to).casefold() if to else None
    found = []
    for envelope_path in directory.glob("*.json") if directory.is_dir() else ():
        envelope = _read_envelope(envelope_path)
        if envelope is None:
            continue
        if wanted and wanted not in {_address(r).casefold() for r in envelope["rcpt_tos"]}:
            continue
        found.append(_stored(envelope_path.with_suffix(".eml"), envelope))
    return sorted(found, key=lambda message: (message.received_at, message.id))


def _read_envelope(path: Path) -> dict[str, Any] | None:
    try:
        envelope = json.loads(path.read_text())
    except FileNotFoundError:
        return None  # removed between the listing and the read
    except (OSError, ValueError) as error:
        raise MailboxError(f"{path}: not a readable envelope ({error}); remove it") from None
    missing = {"id", "received_at", "mail_from", "rcpt_tos"} - set(envelope)
    if missing:
        raise MailboxError(f"{path}: envelope lacks {', '.join(sorted(missing))}; remove it")
    return envelope


def _stored(eml_path: Path, envelope: dict[str, Any]) -> StoredMessage:
    try:
        raw = eml_path.read_bytes()
    except FileNotFoundError:
        raise MailboxError(f"{eml_path}: missing, but its envelope is there; remove "
                           f"{eml_path.with_suffix('.json').name}") from None
    message: EmailMessage = email.message_from_bytes(raw, policy=policy.default)
    headers: dict[str, list[str]] = {}
    for name, value in message.items():
        headers.setdefault(name, []).append(str(value))
    return StoredMessage(
        id=envelope["id"],
        received_at=envelope["received_at"],
        envelope_from=envelope["mail_from"],
        envelope_to=list(envelope["rcpt_tos"]),
        from_=str(message.get("From", "")),
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        reply_to=str(message["Reply-To"]) if message["Reply-To"] else None,
        subject=str(message.get("Subject", "")),
        date=str(message["Date"]) if message["Date"] else None,
        message_id=str(message["Message-ID"]) if message["Message-ID"] else None,
        text=_text_body(message),
        attachments=[part.get_filename() or "(unnamed)" for part in message.iter_attachments()],
        headers=headers,
        size=envelope.get("size", len(raw)),
        path=str(eml_path),
    )


def _addresses(message: EmailMessage, header: str) -> list[str]:
    found = []
    for value in message.get_all(header) or ():
        addresses = getattr(value, "addresses", None)
        found += [str(address) for address in addresses] if addresses else [str(value)]
    return found


def _text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError):  # an unknown charset or a broken transfer encoding
        text = (part.get_payload(decode=True) or b"").decode("utf-8", errors="replace")
    # SMTP carries CRLF line ends; the body is read as text, with "\n".
    return text.replace("\r\n", "\n")


def _address(value: str) -> str:
    return parseaddr(value)[1] or value.strip()


# --- the command's output -------------------------------------------------------------------


def listing(home: Path, *, to: str | None = None, as_json: bool = False) -> str:
    """What `credflow local mail [--to ADDRESS] [--json]` prints."""
    messages = read_messages(home, to=to)
    if as_json:
        return json.dumps([message.to_dict() for message in messages], indent=2)
    where = messages_dir(mail_dir(home))
    if not messages:
        return f"no messages{f' to {to}' if to else ''} in {where}"
    blocks = [_summary(message) for message in messages]
    blocks.append(f"{len(messages)} message(s){f' to {to}' if to else ''} in {where}")
    return "\n".join(blocks)


def _summary(message: StoredMessage) -> str:
    received = message.received_at.replace("T", " ")[:19] + " UTC"
    lines = [f"{received}  from {message.envelope_from or '<>'}  "
             f"to {', '.join(message.envelope_to)}",
             f"  subject: {message.subject}"]
    body = [line for line in message.text.splitlines() if line.strip()]
    for line in body[:PREVIEW_LINES]:
        lines.append(f"  | {_shorten(line)}")
    if len(body) > PREVIEW_LINES:
        lines.append(f"  | … ({len(body) - PREVIEW_LINES} more line(s); --json has them all)")
    if message.attachments:
        lines.append(f"  attachments: {', '.join(message.attachments)}")
    return "\n".join(lines)


def _shorten(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= PREVIEW_WIDTH else line[:PREVIEW_WIDTH - 1] + "…"
