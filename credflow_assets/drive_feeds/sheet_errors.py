"""What the sheet readers share: the error that refuses a file, and columns named as a
spreadsheet names them (A, B, … AA), for messages that point at a cell without quoting it."""

from __future__ import annotations


class SheetError(ValueError):
    """The file cannot be read as a sheet at all (type, encoding, malformed rows). Its message
    is a sentence for the person who uploaded the file: the problem and what to do, never a
    cell's value."""


def column_letter(position: int) -> str:
    """0 → A, 25 → Z, 26 → AA: the column as a spreadsheet shows it."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def column_ranges(positions: list[int]) -> str:
    """[2, 4, 5, 6] → "C, E to G": a long run of empty columns in one phrase."""
    runs: list[list[int]] = []
    for position in sorted(positions):
        if runs and position == runs[-1][1] + 1:
            runs[-1][1] = position
        else:
            runs.append([position, position])
    return ", ".join(column_letter(first) if first == last
                     else f"{column_letter(first)} to {column_letter(last)}"
                     for first, last in runs)
