"""A feed file's problems as lines of its error report (`credflow_assets.common.error_reports`).

Rejected rows come from the feed's rejections table, written in the ingest's transaction, so the
report and the table say the same thing: the row as the sheet numbers it (the header is row 1),
the column, the rule in words and the value as uploaded. A header that does not match gives one
line per column (row and value empty); a row 1 that is not a header at all gives one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from credflow_assets.drive_feeds.store import rejections_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from credflow_assets.common.error_reports import ErrorReport
    from credflow_assets.drive_feeds.ingest import SourceFile
    from credflow_assets.drive_feeds.sheets import HeaderProblem


def report_rejections(errors: ErrorReport, engine: Engine, source: SourceFile) -> None:
    """The file's rejected rows, streamed from the rejections table in row order."""
    with engine.connect() as connection:
        for rejection in rejections_of(connection, source.feed, source.file_id,
                                       source.revision):
            errors.add(rejection.row_number, rejection.column_name, rejection.reason,
                       rejection.value)


def report_header(errors: ErrorReport, problem: HeaderProblem) -> None:
    if problem.separator or problem.not_a_header:
        # Row 1 is not a header (it may be data): one line, the sentence that says why.
        errors.add(None, "", problem.describe())
        return
    for column in problem.missing:
        errors.add(None, column, "missing column (the feed has it)")
    for column in problem.unexpected:
        errors.add(None, column, "unexpected column (not in the feed)")
    for column in problem.duplicated:
        errors.add(None, column, "repeated column")
