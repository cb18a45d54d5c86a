"""Text people read, for every flow and command: what a failed run says, in one line, and the
tables a run's metadata shows in the UI."""

from __future__ import annotations

import re


def error_message(error) -> str:
    """The deepest cause of a Dagster SerializableErrorInfo, as a person reads it: its message
    without the exception's class (`dagster._core.errors.DagsterAssetCheckFailedError: `,
    `ValueError: `)."""
    # Dagster wraps the asset's own exception ("Error occurred while executing op …"); the
    # cause at the bottom of the chain is what names the file and the problem.
    while error.cause is not None:
        error = error.cause
    return message_without_exception_class(error.message, error.cls_name)


# `dagster._core.errors.DagsterAssetCheckFailedError: ` or `ValueError: `: what Python's
# `format_exception_only` puts before an exception's message, when its class is not known.
_EXCEPTION_CLASS = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Failure)(?::\s*|$)")
# A message whose first line announces a list ("2 blocking asset checks failed …:") is kept
# with up to this many of its items, on one line.
MAX_LISTED_LINES = 5


def message_without_exception_class(message: str, cls_name: str | None = None) -> str:
    """`module.SomeError: the message` → `the message`: the class is for programmers, the
    message names the file and the problem. A message announcing a list keeps its items."""
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    if not lines:
        return cls_name or "failed"
    own_class = (re.compile(rf"^(?:[A-Za-z_]\w*\.)*{re.escape(cls_name)}(?::\s*|$)")
                 if cls_name else None)
    if own_class is not None and own_class.match(lines[0]):
        first = own_class.sub("", lines[0], count=1).strip()
    else:
        first = _EXCEPTION_CLASS.sub("", lines[0], count=1).strip()
    if not first:  # an exception raised without a message: its bare class name is all there is
        return cls_name or lines[0].rsplit(".", 1)[-1]
    if first.endswith(":") and len(lines) > 1:
        first += " " + "; ".join(lines[1:1 + MAX_LISTED_LINES])
    return first


def exception_message(error: BaseException) -> str:
    """A raised exception's message as a person reads it: without its class."""
    return message_without_exception_class(str(error), type(error).__name__)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table for `dg.MetadataValue.md`; a `|` in a value is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |"
              for row in rows]
    return "\n".join(lines)
