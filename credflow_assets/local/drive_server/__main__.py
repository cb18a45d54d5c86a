"""`python -m credflow_assets.local.drive_server --state-dir DIR --port P --token T`."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m credflow_assets.local.drive_server",
        description="Local server for the subset of the Google Drive v3 API credflow uses.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where state persists")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--token",
        default=os.environ.get("CREDFLOW_DRIVE_TOKEN"),
        help="bearer token clients must send (default: $CREDFLOW_DRIVE_TOKEN)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is required (--token or CREDFLOW_DRIVE_TOKEN)")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # One server per state dir: a second one would interleave writes with the first.
    lock = open(args.state_dir / "server.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"another Drive server is using {args.state_dir}", file=sys.stderr)
        return 1
    lock.write(str(os.getpid()))
    lock.flush()
    serve(args.state_dir, args.port, args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
