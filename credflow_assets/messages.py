"""Text people read, for every flow and command: what a failed run says, in one line, and the
tables a run's metadata shows in the UI."""

from __future__ import annotations


def error_message(error_info) -> str:
    """The first line of the deepest cause of a Dagster SerializableErrorInfo."""
    # Dagster wraps the asset's own exception ("Error occurred while executing op …"); the
    # cause at the bottom of the chain is what names the file and the problem.
    while error_info.cause is not None:
        error_info = error_info.cause
    message = error_info.message.strip().splitlines()[0]
    # A dg.Failure's description is the message; drop the class path Dagster puts in front.
    return message.removeprefix("dagster._core.definitions.events.Failure: ")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table for `dg.MetadataValue.md`; a `|` in a value is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |"
              for row in rows]
    return "\n".join(lines)
