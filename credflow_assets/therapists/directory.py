"""The therapist directory (signup database, read only): who a therapist id belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()

therapists_table = sa.Table(
    "therapists",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("first_name", sa.String(200), nullable=False),
    sa.Column("last_name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class Therapist:
    id: str
    first_name: str
    last_name: str


class UnknownTherapistError(LookupError):
    """An upload names a therapist id the directory does not have (yet: signup rows can lag)."""


def get_therapist(engine: sa.Engine, therapist_id: str) -> Therapist:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(
                therapists_table.c.id, therapists_table.c.first_name, therapists_table.c.last_name
            ).where(therapists_table.c.id == therapist_id)
        ).one_or_none()
    if row is None:
        raise UnknownTherapistError(
            f"therapist id {therapist_id!r} is not in the therapist directory; its uploads wait "
            "and are retried on later sensor ticks"
        )
    return Therapist(id=row.id, first_name=row.first_name, last_name=row.last_name)
