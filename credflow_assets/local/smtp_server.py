"""The local SMTP server: aiosmtpd on 127.0.0.1, every message it accepts kept in the mailbox.

`start(home)` runs `python -m credflow_assets.local.smtp_server --state-dir HOME/mail --port P`
detached (see `process.py`); `credflow local mail` reads what it stored (see `mailbox.py` for
the layout). It relays nothing: a message is accepted for any recipient and stays in the
mailbox, across restarts, until the home is removed. It offers no TLS and no AUTH, so the
local config sets `mail.starttls: false` and no username.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import sys
from pathlib import Path

from credflow_assets.local.mailbox import mail_dir, remove_unacknowledged, store_message
from credflow_assets.local.process import (
    LOOPBACK,
    ServiceStartError,
    free_port,
    spawn_detached,
    wait_for_port,
)

logger = logging.getLogger("credflow.local.smtp")

# What the server calls itself in its greeting (the default, the machine's FQDN, may cost a
# DNS lookup at every start).
SERVER_HOSTNAME = "credflow-local-smtp"
# aiosmtpd's default: a larger message is refused with 552.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def start(home: Path, *, port: int | None = None) -> dict:
    """Start the server for `home` (mailbox in HOME/mail, log in HOME/logs/smtp.log).

    Returns {"pid", "port", "host"}. Raises ServiceStartError if it does not come up.
    """
    if importlib.util.find_spec("aiosmtpd") is None:
        raise ServiceStartError(
            "smtp: aiosmtpd is not installed; it comes with credflow's `local` extra "
            "(pip install 'credflow[local]')")
    home = Path(home)
    port = port or free_port()
    log_path = home / "logs" / "smtp.log"
    command = [sys.executable, "-m", "credflow_assets.local.smtp_server",
               "--state-dir", str(mail_dir(home)), "--port", str(port)]
    process = spawn_detached("smtp", command, log_path)
    try:
        wait_for_port("smtp", port, process=process, log_path=log_path)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return {"pid": process.pid, "port": port, "host": LOOPBACK}


class MailboxHandler:
    """aiosmtpd's handler: stores each message's content and envelope, then answers 250."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir

    async def handle_DATA(self, server, session, envelope) -> str:
        import asyncio

        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        try:
            # File writes and fsyncs off the event loop: other clients keep being served.
            message_id = await asyncio.get_running_loop().run_in_executor(
                None, lambda: store_message(
                    self.state_dir, mail_from=envelope.mail_from or "",
                    rcpt_tos=envelope.rcpt_tos, content=envelope.original_content or b"",
                    peer=peer))
        except OSError as error:
            logger.error(f"could not store a message from {envelope.mail_from}: {error}")
            # 4xx: a temporary failure; the client keeps the message and tries again.
            return "451 4.3.0 Could not store the message; try again later"
        logger.info(f"stored {message_id} from {envelope.mail_from or '<>'} to "
                    f"{', '.join(envelope.rcpt_tos)} ({len(envelope.original_content or b'')} "
                    "bytes)")
        return "250 2.0.0 OK: stored"


def serve(state_dir: Path, port: int) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    import asyncio
    import signal

    from aiosmtpd.smtp import SMTP

    async def run() -> None:
        loop = asyncio.get_running_loop()
        handler = MailboxHandler(state_dir)
        server = await loop.create_server(
            lambda: SMTP(handler, hostname=SERVER_HOSTNAME, enable_SMTPUTF8=True,
                         data_size_limit=MAX_MESSAGE_BYTES, loop=loop),
            host=LOOPBACK, port=port)
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        logger.info(f"listening on {LOOPBACK}:{port}; mailbox {state_dir}")
        await stopping.wait()
        server.close()
        await server.wait_closed()
        logger.info("stopped")

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m credflow_assets.local.smtp_server",
        description="Local SMTP server: accepts every message and stores it in a mailbox.")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="the mailbox (messages/, tmp/); persists across restarts")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # aiosmtpd logs every command of every session at INFO; the stored-message line suffices.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # One server per mailbox: a second one's start-up cleanup would remove the first's
    # messages in flight.
    lock = open(args.state_dir / "server.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"another SMTP server is using {args.state_dir}", file=sys.stderr)
        return 1
    lock.write(str(os.getpid()))
    lock.flush()
    removed = remove_unacknowledged(args.state_dir)
    if removed:
        logger.info(f"removed {len(removed)} file(s) of messages never acknowledged: "
                    f"{', '.join(removed)}")
    serve(args.state_dir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
