"""Evidence for the provider-landing fixes proposed in RESULTS.md: the landed step's local stages,
current code against a prototype, on the same generated file (no stack needed).

    .venv/bin/python bench/landing_fixes.py            # one 128 MiB gzip CSV (~340 MB of CSV)
    .venv/bin/python bench/landing_fixes.py --quick    # 16 MiB

1. Counting CSV records: `unpack.count_csv_rows` (csv.reader over the whole file) against a
   quote-aware line-break count (a `"` toggles "inside a quoted field"; line breaks outside quoted
   fields end records, so quoted line breaks stay in their row, as with csv.reader), checked to
   give the same count, also on a file with quoted commas and line breaks.
2. Decompressing: `unpack.unpack` (Python's gzip module) against `gzip -dc` (the baseline's tool)
   and a zlib.decompressobj loop.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, print_machine, table  # noqa: E402
from provider_landing import csv_block, make_gzip_csv  # noqa: E402

CHUNK = 1024 * 1024


def count_records_fast(path: Path) -> int:
    """Data records of a CSV: line breaks outside quoted fields, minus the header (prototype)."""
    breaks, inside, last = 0, False, b""
    with open(path, "rb") as raw:
        while chunk := raw.read(CHUNK):
            if not inside and b'"' not in chunk:
                breaks += chunk.count(b"\n")
            else:
                for index, part in enumerate(chunk.split(b'"')):
                    if index:
                        inside = not inside
                    if not inside:
                        breaks += part.count(b"\n")
            last = chunk[-1:]
    if last and last != b"\n":
        breaks += 1
    return max(breaks - 1, 0)


def gunzip_zlib(src: Path, target: Path) -> int:
    written = 0
    decompressor = zlib.decompressobj(wbits=31)
    with open(src, "rb") as stream, open(target, "wb") as out:
        while chunk := stream.read(CHUNK):
            while chunk:
                data = decompressor.decompress(chunk)
                out.write(data)
                written += len(data)
                if decompressor.eof:  # next gzip member
                    chunk = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                else:
                    chunk = b""
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int)
    args = parser.parse_args()
    size = (args.mib or (16 if args.quick else 128)) * MiB
    print_machine()
    from credflow_assets.local.seed_provider_feeds import members_csv
    from credflow_assets.provider_feeds.unpack import count_csv_rows, unpack

    with tempfile.TemporaryDirectory(prefix="cfb-fixes-") as work:
        work = Path(work)
        block = csv_block(200_000, seed=3)
        header = b"member_id,first_name,last_name,npi,license_state,amount,date,notes\n"
        gz = work / "roster.csv.gz"
        make_gzip_csv(gz, size, gzip.compress(block, compresslevel=6, mtime=0), len(block), header)
        rows = []

        started = time.monotonic()
        found, files = unpack(gz, gz.name, work / "out", max_bytes=10 * 1024**3)
        python_gzip = time.monotonic() - started
        csv_path = files[0].path
        plain = csv_path.stat().st_size
        started = time.monotonic()
        with open(work / "cli.csv", "wb") as out:
            subprocess.run(["gzip", "-dc", str(gz)], stdout=out, check=True)
        cli = time.monotonic() - started
        (work / "cli.csv").unlink()
        started = time.monotonic()
        assert gunzip_zlib(gz, work / "zlib.csv") == plain
        zlib_loop = time.monotonic() - started
        (work / "zlib.csv").unlink()
        rows += [["decompress: unpack() (gzip module, current)", python_gzip, plain / 1e6 / python_gzip],
                 ["decompress: gzip -dc (the baseline's tool)", cli, plain / 1e6 / cli],
                 ["decompress: zlib.decompressobj loop", zlib_loop, plain / 1e6 / zlib_loop]]

        started = time.monotonic()
        current, _note = count_csv_rows(csv_path)
        csv_reader = time.monotonic() - started
        started = time.monotonic()
        fast = count_records_fast(csv_path)
        quote_aware = time.monotonic() - started
        assert fast == current, (fast, current)
        rows += [["count rows: count_csv_rows (csv.reader, current)", csv_reader, plain / 1e6 / csv_reader],
                 ["count rows: quote-aware line breaks (prototype)", quote_aware, plain / 1e6 / quote_aware]]
        tricky = work / "tricky.csv"
        tricky.write_bytes(members_csv(1000) + b'x,"a ""quoted"" word, and\na break",y\nlast,row')
        assert count_records_fast(tricky) == count_csv_rows(tricky)[0], "tricky CSV differs"
    print(f"\nLanded-step stages on one file: {size / MiB:.0f} MiB gzip, {plain / 1e6:,.0f} MB of CSV "
          f"({current:,} records; both counters agree, also on quoted commas and line breaks)")
    print(table(["stage", "seconds", "MB/s of CSV"], rows))


if __name__ == "__main__":
    main()
