"""One pandera `DataFrameModel` per Drive feed: the columns a feed's sheet must have, and the rules
each row must meet. A feed's `schema` in credflow.yaml names its model here; a new feed is a new
model plus a config entry, no other code.

How the engine reads a model (see `validation.FeedPlan`):

- The columns are the sheet's headers, after normalisation (`common/csv_columns.py`, the rule
  staged tables use too): `Date of Birth`, `DATE-OF-BIRTH` and `date_of_birth` are the same
  header. The model is strict: a missing or unexpected header fails the whole file
  before anything is written.
- Every cell arrives as text (stripped; empty is null). `pa.DateTime` columns are parsed with the
  feed's `date_formats` (ISO 8601 when the feed names no format); a cell that does not parse
  rejects its row. A boolean column's cells are read as yes/no words (true/false, yes/no, 1/0,
  t/f, y/n, in any case; a sheet's own TRUE/FALSE cells too); any other value rejects its row.
  Other non-text columns need `coerce=True` on their Field.
- The feed's `id_column` must be non-null and unique in the file. Uniqueness is enforced across the
  whole file (not per chunk) by the engine; every other check runs per row, and a row that fails
  one is rejected with its row number and reason while the good rows go in.
- The SQL table's columns follow the model: text, date (a date-only format), timestamp, integer,
  float or boolean.

The definitions read a model's columns from `model_columns.json`, a digest of this file, so that
loading the code location imports neither pandas nor pandera (`model_columns.py`). After editing
a model, run `make model-columns`; until then the columns are read from the models themselves.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from credflow_assets.drive_feeds.model_columns import UnknownSchemaError, unknown_model_message

EARLIEST_BIRTH_DATE = pd.Timestamp("1900-01-01")
# Loose on purpose: an email with a typo is still worth a help request; this rejects only cells
# that are clearly not an address (no @, spaces, no dot in the domain).
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
NHS_NUMBER_PATTERN = r"^\d{10}$"
# UK postcodes, either case, with or without the space.
POSTCODE_PATTERN = r"^(?i:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})$"


def _id(description: str) -> pa.Field:
    return pa.Field(nullable=False, unique=True, str_length={"min_value": 1, "max_value": 64},
                    description=description)


def _text(description: str, *, nullable: bool = True, **checks) -> pa.Field:
    return pa.Field(nullable=nullable, description=description, **checks)


def _date_of_birth() -> pa.Field:
    return pa.Field(nullable=False, ge=EARLIEST_BIRTH_DATE,
                    description="Date of birth, in the feed's date format")


class ContactTracingRecord(pa.DataFrameModel):
    """A resident referred by NHS Test and Trace's Contact Tracing and Advice Service (CTAS)."""

    ctas_id: Series[str] = _id("CTAS case id")
    first_name: Series[str] = _text("First name", nullable=False)
    last_name: Series[str] = _text("Last name", nullable=False)
    date_of_birth: Series[pa.DateTime] = _date_of_birth()
    phone_number: Series[str] = _text("Contact phone number")
    email: Series[str] = _text("Email address", str_matches=EMAIL_PATTERN)
    address_line_1: Series[str] = _text("First line of address")
    address_line_2: Series[str] = _text("Second line of address")
    city: Series[str] = _text("Town or city")
    postcode: Series[str] = _text("Postcode", str_matches=POSTCODE_PATTERN)

    class Config:
        strict = True


class NsssRecord(pa.DataFrameModel):
    """A clinically extremely vulnerable resident registered with the National Shielding Service
    System (NSSS)."""

    nss_id: Series[str] = _id("NSSS registration id")
    nhs_number: Series[str] = _text("NHS number (10 digits)", str_matches=NHS_NUMBER_PATTERN)
    first_name: Series[str] = _text("First name", nullable=False)
    last_name: Series[str] = _text("Last name", nullable=False)
    date_of_birth: Series[pa.DateTime] = _date_of_birth()
    address_line_1: Series[str] = _text("First line of address")
    address_line_2: Series[str] = _text("Second line of address")
    city: Series[str] = _text("Town or city")
    postcode: Series[str] = _text("Postcode", str_matches=POSTCODE_PATTERN)
    phone_number: Series[str] = _text("Contact phone number")
    email: Series[str] = _text("Email address", str_matches=EMAIL_PATTERN)
    needs_essential_supplies: Series[str] = _text(
        "Asked for help getting essential supplies (yes/no)",
        isin=["yes", "no", "Yes", "No", "YES", "NO"],
    )

    class Config:
        strict = True


class SplRecord(pa.DataFrameModel):
    """A patient on the NHS Shielded Patient List (SPL)."""

    spl_id: Series[str] = _id("SPL record id")
    nhs_number: Series[str] = _text("NHS number (10 digits)", str_matches=NHS_NUMBER_PATTERN)
    first_name: Series[str] = _text("First name", nullable=False)
    last_name: Series[str] = _text("Last name", nullable=False)
    date_of_birth: Series[pa.DateTime] = _date_of_birth()
    address_line_1: Series[str] = _text("First line of address")
    address_line_2: Series[str] = _text("Second line of address")
    postcode: Series[str] = _text("Postcode", str_matches=POSTCODE_PATTERN)
    phone_number: Series[str] = _text("Contact phone number")
    email: Series[str] = _text("Email address", str_matches=EMAIL_PATTERN)
    gp_practice_code: Series[str] = _text("Registered GP practice (ODS code)",
                                          str_matches=r"^[A-Z]\d{5}$")

    class Config:
        strict = True


def schema_model(name: str) -> type[pa.DataFrameModel]:
    """The DataFrameModel called `name` in this module (a feed's `schema` setting)."""
    candidate = globals().get(name)
    if isinstance(candidate, type) and issubclass(candidate, pa.DataFrameModel) \
            and candidate is not pa.DataFrameModel:
        return candidate
    raise UnknownSchemaError(unknown_model_message(name, available_models()))


def available_models() -> list[str]:
    return sorted(
        name for name, value in globals().items()
        if isinstance(value, type) and issubclass(value, pa.DataFrameModel)
        and value is not pa.DataFrameModel
    )
