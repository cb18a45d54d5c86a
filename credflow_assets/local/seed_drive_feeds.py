"""Demo sheets for the Drive feeds flow (source doc 001), dropped in each feed's inbound folder.

For every feed: a good CSV; a CSV with a bad date of birth and an empty id among good rows; the
good CSV corrected for five residents, uploaded after it as a new file (updates and change
history); for the NSSS feed also an XLSX whose dates of birth are real date cells. Uploaded in
that order, so one `credflow sync` processes the correction after the original. Headers are written as
people write them (`NSS ID`, `Date of Birth`); dates in the feed's own format. Idempotent: each
seeded file carries `credflow_seed=drive_feeds` and a `credflow_seed_file` slug in its
appProperties, and a file already there is left alone.

The sheets are uploaded as the demo's analyst (FEED_ANALYST, through a token the local Drive
server mints for that person: `as_drive_user`), so Drive names them as the files'
`lastModifyingUser`, and a rejected sheet's e-mail goes to them (`credflow local mail`).

`sample_rows`, `header_for`, `write_csv` and `write_xlsx` make sheets of any size for the tests.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import tempfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from credflow_assets.resources.drive import DriveResource

if TYPE_CHECKING:
    from credflow_assets.config import CredflowConfig, FeedConfig

SEED_MARKER = "credflow_seed"
SEED_VALUE = "drive_feeds"
SEED_FILE = "credflow_seed_file"
XLSX_FEED = "nsss"
FEED_ANALYST = ("Dee Feeds", "dee.feeds@credflow.local")


def as_drive_user(drive: DriveResource, display_name: str, email: str) -> DriveResource:
    """`drive` acting as a named person: a token the local Drive server mints for them
    (`POST /_admin/users`, with the server's own token). Local only: real Drive has no such
    route, so without an `api_url` the resource is returned as it is."""
    if not drive.api_url or not drive.token:
        return drive
    request = urllib.request.Request(
        drive.api_url.rstrip("/") + "/_admin/users", method="POST",
        data=json.dumps({"displayName": display_name, "emailAddress": email}).encode(),
        headers={"Authorization": f"Bearer {drive.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    return DriveResource(api_url=drive.api_url, token=token, num_retries=drive.num_retries)
CSV_MIME = "text/csv"
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

FIRST_NAMES = ("Amara", "Ben", "Chloe", "Dev", "Ebony", "Femi", "Grace", "Hassan", "Isla", "Jamal",
               "Kemi", "Liam", "Maya", "Nikhil", "Olu", "Priya", "Quinn", "Rosa", "Sami", "Tariq")
LAST_NAMES = ("Adeyemi", "Brown", "Chen", "Doherty", "Evans", "Fernandes", "Green", "Hussain",
              "Ibrahim", "Jones", "Kowalski", "Lewis", "Murphy", "Nowak", "O'Connor", "Patel",
              "Quigley", "Rahman", "Smith", "Taylor")
STREETS = ("Mare Street", "Dalston Lane", "Kingsland Road", "Homerton High Street",
           "Stoke Newington Church Street", "Well Street", "Morning Lane", "Amhurst Road")
POSTCODES = ("E8 1DY", "E8 2PB", "E8 3RL", "E9 6AS", "E9 7HD", "N16 0AS", "N16 7UX", "E5 0LL")
GP_PRACTICES = ("F84003", "F84008", "F84013", "F84015", "F84018")
ID_PREFIXES = {"ctas_id": "CTAS", "nss_id": "NSS", "spl_id": "SPL"}


def _value(column: str, index: int, variant: int, feed: FeedConfig) -> object:
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    last = LAST_NAMES[(index // len(FIRST_NAMES)) % len(LAST_NAMES)]
    if column == feed.id_column:
        return f"{ID_PREFIXES.get(column, 'ID')}{index:07d}"
    if column == "first_name":
        return first
    if column == "last_name":
        return last
    if column == "date_of_birth":
        return dt.date(1935, 1, 1) + dt.timedelta(days=(index * 367) % 25_000)
    if column == "nhs_number":
        return f"{9_000_000_000 + index:010d}"
    if column == "phone_number":
        return f"07700 9{(index + variant) % 100_000:05d}"
    if column == "email":
        return f"{first.lower()}.{last.lower().replace(chr(39), '')}{index}@example.org"
    if column == "address_line_1":
        return f"{(index + variant) % 300 + 1} {STREETS[index % len(STREETS)]}"
    if column == "address_line_2":
        return f"Flat {index % 12 + 1}" if index % 3 == 0 else ""
    if column == "city":
        return "London"
    if column == "postcode":
        return POSTCODES[index % len(POSTCODES)]
    if column == "needs_essential_supplies":
        return "yes" if index % 2 else "no"
    if column == "gp_practice_code":
        return GP_PRACTICES[index % len(GP_PRACTICES)]
    return ""


def columns_of(feed: FeedConfig) -> list[str]:
    from credflow_assets.drive_feeds.model_columns import model_columns

    return [column.name for column in model_columns(feed.schema_name)]


def header_for(column: str) -> str:
    """How a person heads the column: `NSS ID`, `Date of Birth`, `NHS Number`."""
    words = column.split("_")
    return " ".join(w.upper() if w in ("id", "nhs", "nss", "spl", "ctas", "gp") else w.capitalize()
                    for w in words)


def sample_rows(feed: FeedConfig, count: int, *, start: int = 0, variant: int = 0,
                dates_as_text: bool = True) -> list[dict[str, object]]:
    """`count` plausible rows for the feed, ids `start`…; `variant` changes phone and address
    (a corrected re-upload). Dates are written in the feed's date format unless
    `dates_as_text` is False (real dates, for XLSX date cells)."""
    columns = columns_of(feed)
    fmt = feed.date_formats.get("date_of_birth", "%Y-%m-%d")
    rows = []
    for index in range(start, start + count):
        row = {column: _value(column, index, variant, feed) for column in columns}
        if dates_as_text and isinstance(row.get("date_of_birth"), dt.date):
            row["date_of_birth"] = row["date_of_birth"].strftime(fmt)
        rows.append(row)
    return rows


def write_csv(path: Path, feed: FeedConfig, rows: list[dict], *, headers: dict | None = None) -> Path:
    """Rows as a CSV with human headers; `headers` renames columns (a wrong header)."""
    columns = columns_of(feed)
    names = [(headers or {}).get(column, header_for(column)) for column in columns]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def write_xlsx(path: Path, feed: FeedConfig, rows: list[dict]) -> Path:
    import openpyxl

    columns = columns_of(feed)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("Residents")
    sheet.append([header_for(column) for column in columns])
    for row in rows:
        sheet.append([row.get(column) or None for column in columns])
    workbook.save(path)
    return path


def _demo_files(feed: FeedConfig, work: Path) -> list[tuple[str, str, Path, str]]:
    """(slug, Drive name, local file, mime type) of the feed's demo sheets."""
    good = write_csv(work / f"{feed.name}-good.csv", feed, sample_rows(feed, 40))
    rows = sample_rows(feed, 12, start=100)
    rows[3]["date_of_birth"] = "31/02/1980"  # no 31 February, in any feed's format
    rows[7][feed.id_column] = ""
    errors = write_csv(work / f"{feed.name}-errors.csv", feed, rows)
    # The good sheet again, uploaded later as a new file, with five residents' phone and
    # address corrected: five updates with change history, thirty-five unchanged rows.
    corrected = write_csv(work / f"{feed.name}-corrected.csv", feed,
                          sample_rows(feed, 5, variant=1) + sample_rows(feed, 35, start=5))
    files = [
        ("good", f"{feed.name} referrals 2020-11-02.csv", good, CSV_MIME),
        ("errors", f"{feed.name} referrals 2020-11-03.csv", errors, CSV_MIME),
        ("corrected", f"{feed.name} referrals 2020-11-02 (corrected).csv", corrected, CSV_MIME),
    ]
    if feed.name == XLSX_FEED:
        xlsx = write_xlsx(work / f"{feed.name}.xlsx", feed,
                          sample_rows(feed, 25, start=200, dates_as_text=False))
        files.append(("xlsx", f"{feed.name} referrals 2020-11-04.xlsx", xlsx, XLSX_MIME))
    return files


def seed_drive_feeds(config: CredflowConfig, drive: DriveResource) -> list[str]:
    """Upload each feed's demo sheets that are not there yet; a line per file, for the terminal."""
    lines = []
    analyst = as_drive_user(drive, *FEED_ANALYST)
    with tempfile.TemporaryDirectory(prefix="credflow-seed-feeds-") as work:
        for feed in config.feeds:
            for slug, name, path, mime in _demo_files(feed, Path(work)):
                seed_key = f"{feed.name}/{slug}"
                existing = drive.find_children_by_app_property(
                    feed.inbound_folder_id, SEED_FILE, seed_key)
                if existing:
                    lines.append(f"{feed.name}: {name} already in the inbound folder")
                    continue
                analyst.upload_file(path, name, feed.inbound_folder_id, mime_type=mime,
                                  app_properties={SEED_MARKER: SEED_VALUE, SEED_FILE: seed_key})
                lines.append(f"{feed.name}: uploaded {name} to the inbound folder")
    return lines
