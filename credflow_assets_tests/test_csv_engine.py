"""The flows' one CSV engine and one header rule (`credflow_assets.common`): the same header is
the same column in the Drive feeds and the staged tables, and each flow reads its rows through
the same Arrow reader, in its own shape. No services."""

from __future__ import annotations

import io

import pytest

from credflow_assets.common.csv_chunks import CsvChunkError, CsvShape, csv_chunks, is_missing
from credflow_assets.common.csv_columns import normalize_header, normalize_headers
from credflow_assets.drive_feeds.sheets import check_header
from credflow_assets.staged_tables.columns import HeaderError, compare_columns, read_header
from credflow_assets.staged_tables.validation import (
    ATHENA_READER,
    LINE_BREAK_RULE,
    validate_rows,
)


class _OneObjectS3:
    """Just enough of an S3 client for `read_header`: one object, ranged reads."""

    def __init__(self, data: bytes):
        self.data = data

    def get_object(self, Bucket, Key, Range, **conditions):  # noqa: N803 - boto3's names
        first, last = (int(part) for part in Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(self.data[first:last + 1]),
                "ContentRange": f"bytes {first}-{last}/{len(self.data)}"}


@pytest.mark.parametrize("header", [
    "DATE-OF-BIRTH", " Date of Birth ", "\ufeffdate_of_birth", "date of  birth", "Date_Of_Birth_",
])
def test_the_same_header_is_the_same_column_in_both_flows(header):
    assert normalize_header(header) == "date_of_birth"
    # Drive feeds: the sheet's header mapped onto the feed's model.
    names, problem = check_header([header, "ID"], ["date_of_birth", "id"])
    assert names == ["date_of_birth", "id"] and problem is None
    # Staged tables: the object's first line, normalized, against the table's columns.
    line = (f'"{header}",ID\n1980-01-31,7\n').encode("utf-8")
    raw = read_header(_OneObjectS3(line), "bucket", "staging/people/x.csv")
    assert normalize_headers(raw) == ["date_of_birth", "id"]
    assert compare_columns(normalize_headers(raw), ["date_of_birth", "id"]).passed


@pytest.mark.parametrize("data, plural", [
    (b"claim_id;first_name;amount\nC-1;Ann;5\n", "semicolons"),
    (b"claim_id\tfirst_name\nC-1\tAnn\n", "tabs"),
    (b"Claim ID|First Name\n", "vertical bars"),
])
def test_a_staged_header_separated_otherwise_than_by_commas_is_refused(data, plural):
    # Normalized, `claim_id;first_name;amount` would be one valid name: a one-column table.
    with pytest.raises(HeaderError) as refused:
        read_header(_OneObjectS3(data), "bucket", "staging/people/x.csv")
    assert str(refused.value) == (f"the header is one column holding {plural}: the file is "
                                  f"separated by {plural}, not commas; save it as CSV "
                                  "(comma-separated)")
    assert read_header(_OneObjectS3(b"note\nsee; also\n"), "b", "k") == ["note"]


def test_a_staged_header_is_read_past_rows_that_are_not_utf8():
    latin1 = "id,name\n1,Jos\xe9\n".encode("latin-1")
    assert read_header(_OneObjectS3(latin1), "bucket", "staging/people/x.csv") == ["id", "name"]
    with pytest.raises(HeaderError, match=r"the header is not UTF-8 text \(byte 4\)"):
        read_header(_OneObjectS3("id,n\xe4me\n1,2\n".encode("latin-1")), "b", "k")


def test_punctuation_is_one_underscore_and_none_at_either_end():
    assert normalize_headers(["amount ($)", "Claim #", "  ", None, "é-mail"]) == [
        "amount", "claim", "", "", "mail"]


def _frames(data: bytes, shape: CsvShape, chunk_rows: int = 2):
    return [frame for frame in csv_chunks(io.BytesIO(data), shape, chunk_rows)]


def _rows(frames) -> dict[int, tuple]:
    return {int(number): tuple(None if is_missing(cell) else cell for cell in row)
            for frame in frames
            for number, row in zip(frame.index, frame.itertuples(index=False))}


def test_a_staged_file_is_read_as_uploaded_and_a_sheet_trimmed():
    data = b"a,b\n 1 , x\n\n2,\n3,y,extra,more\n4\n"
    staged = CsvShape(names=("a", "b"), first_row=1, strip=False, blank_lines_are_rows=False,
                      extra_fields_column="extra", refuse_quote_open_at_end=True)
    assert _rows(_frames(data, staged)) == {
        1: (" 1 ", " x", None), 2: ("2", None, None), 3: ("3", "y", "extra,more"),
        4: ("4", None, None)}
    sheet = CsvShape(names=("a", "b"))
    with pytest.raises(CsvChunkError) as refused:
        _frames(data, sheet)
    assert (refused.value.kind, refused.value.row, refused.value.fields) == (
        "too_many_fields", 5, 4)
    assert _rows(_frames(b"a,b\n 1 , x\n\n2,\n", sheet)) == {
        2: ("1", "x"), 3: (None, None), 4: ("2", None)}


@pytest.mark.parametrize("data, row", [
    (b'a,b\n1,"open\n2,x\n', 1),
    (b'a,b\n1,2\n3,"open', 2),
    (b'a\n1\n"open\n2\n', 2),
])
def test_a_staged_file_that_ends_inside_a_quoted_cell_is_refused(data, row):
    shape = CsvShape(names=tuple("ab"[:data.split(b"\n")[0].count(b",") + 1]), first_row=1,
                     strip=False, blank_lines_are_rows=False, extra_fields_column="extra",
                     refuse_quote_open_at_end=True)
    with pytest.raises(CsvChunkError) as refused:
        _frames(data, shape, chunk_rows=1)
    assert (refused.value.kind, refused.value.row) == ("unclosed_quote", row)
    columns = list(shape.names)
    assert validate_rows(io.BytesIO(data), columns).file_error == (
        f"not valid CSV: row {row} opens a quoted cell that never closes (EOF inside string)")


@pytest.mark.parametrize("data", [b'a,b\n1,"x\ny"\n2,12" ruler', b'a\n1\n2\n', b"a\n1\n2"])
def test_quotes_that_close_and_stray_quotes_are_read(data):
    columns = ["a", "b"] if b"," in data else ["a"]
    report = validate_rows(io.BytesIO(data), columns, chunk_rows=1)
    assert report.file_error is None and report.rows == 2, report.summary()
    # The quoted line break is read as one value: the rule Athena needs, not a parse error.
    assert list(report.by_check) == ([(ATHENA_READER, "b", LINE_BREAK_RULE)]
                                     if b'"x\ny"' in data else []), report.summary()
