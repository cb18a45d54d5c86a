"""A provider file's problems as lines of its error report (`credflow_assets.common.error_reports`).

Two kinds of problem are told there, with the name or value that caused them (which the event
log and the parse log never hold in full, only the failure's sentence):

- a member refused while unpacking (an unsafe path, a link, a device file, a duplicate, one
  that passes the size or expansion limit): the whole archive is refused; column and value are
  the member's path inside the archive (empty column for a file that is not an archive);
- a CSV that ends inside an unterminated quoted field, the one bad row `rows.CsvRecordCounter`
  counts while the file lands: its row (data rows, 1 the first after the header), the landed
  file's name as column and value (its bytes are not kept: the file itself is landed).
"""

from __future__ import annotations

from typing import Any

from credflow_assets.common.error_reports import ErrorReport
from credflow_assets.provider_feeds.limits import ExtractionLimitExceeded
from credflow_assets.provider_feeds.unpack import UnsafeMember


def report_refusal(errors: ErrorReport, error: BaseException, file_name: str) -> None:
    """The member (or file) that refused the whole file, if `error` is such a refusal."""
    if isinstance(error, UnsafeMember):
        errors.add(None, error.member, f"unsafe archive member: {error.reason}; the whole "
                   "archive is refused", error.member)
    elif isinstance(error, ExtractionLimitExceeded):
        errors.add(None, error.member or "", str(error), error.member or file_name)


def report_bad_rows(errors: ErrorReport, landed: list[dict[str, Any]]) -> None:
    """The bad rows counted while each landed CSV was uploaded."""
    for entry in landed:
        if entry.get("rows_note"):
            errors.add(entry["rows"] or None, entry["name"], entry["rows_note"], entry["name"])
