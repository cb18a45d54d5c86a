"""SQL databases through SQLAlchemy: SQLite locally, PostgreSQL in production; one code path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# Several processes (two `credflow sync`s, the daemon's runs) may write one SQLite file at once:
# wait for the lock instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 30


class SqlResource(ConfigurableResource):
    """A database reached by SQLAlchemy URL (`sqlite:///…`, `postgresql+psycopg2://…`)."""

    url: str

    _engine: Engine | None = PrivateAttr(default=None)

    def get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    def teardown_after_execution(self, context) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def create_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL journaling and a busy timeout for concurrent writers."""
    import sqlalchemy

    if not url.startswith("sqlite"):
        return sqlalchemy.create_engine(url, pool_pre_ping=True)
    engine = sqlalchemy.create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    )

    @sqlalchemy.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def redacted_url(url: str) -> str:
    """The URL with any password masked, for logs and metadata."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
