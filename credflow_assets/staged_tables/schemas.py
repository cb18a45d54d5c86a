"""Pandera models for staged tables: `staged_tables.tables[].schema` names a class here.

A model validates a whole staged file, chunk by chunk, after its header is normalized
(`First Name` → `first_name`), so field names are the table's normalized column names. Values
arrive as text (empty cells as nulls) and are coerced to the field's type, as Athena would read
them. Checks run per chunk: a uniqueness rule would only hold within a chunk, so there is none.

A model with `strict` and `ordered` also guards a table's *founding* file: without a Glue table
or a prod file to compare with, the first file would otherwise define the columns by itself.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing.pandas import DateTime, Series


class ClaimsRecord(pa.DataFrameModel):
    """One insurance claim, as analysts export them: the `claims` demo table."""

    claim_id: Series[str] = pa.Field(str_matches=r"^C-\d{4,}$", nullable=False)
    first_name: Series[str] = pa.Field(nullable=False)
    last_name: Series[str] = pa.Field(nullable=False)
    service_date: Series[DateTime] = pa.Field(nullable=False)
    amount_usd: Series[float] = pa.Field(ge=0, le=1_000_000, nullable=False)
    status: Series[str] = pa.Field(isin=["submitted", "paid", "denied"], nullable=False)

    class Config:
        coerce = True
        strict = True
        ordered = True


MODELS: dict[str, type[pa.DataFrameModel]] = {"ClaimsRecord": ClaimsRecord}


def resolve_model(name: str) -> type[pa.DataFrameModel]:
    """The model called `name`; a KeyError that lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(
            f"no pandera model {name!r} in credflow_assets/staged_tables/schemas.py "
            f"(known: {', '.join(sorted(MODELS))})"
        ) from None
