"""Integration tests run against a real local stack (moto, sshd, the Drive server, SQLite).

One stack per test session, under a temporary CREDFLOW_HOME, started by the same code as
`credflow local up`; its environment is exported for the session, as `credflow local env` would.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from credflow_assets.config import load_config
from credflow_assets.local import stack

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "credflow.yaml"
pytest_plugins = ["credflow_assets_tests.dagster_ui", "credflow_assets_tests.daemon_files"]


@contextmanager
def running_stack(home: Path, config_path: Path = DEFAULT_CONFIG, *, config=None,
                  extra_env: dict[str, str] | None = None):
    """Start a stack under `home`, export its environment for the duration, stop it after.

    Yields (state, config, variables). `config` replaces the file's (a test's variant of it);
    `extra_env` adds variables a test's config refers to. Modules whose sensors must see only
    their own S3 events use a stack of their own this way; the rest share `local_stack`.
    """
    config = config or load_config(config_path)
    state = stack.up(home, config, config_path)
    variables = {**stack.environment(state, config), **(extra_env or {})}
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield state, config, variables
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stack.down(home)


# The modules on the Dagster UI stack (the `dagster_ui` session fixture: the webserver, the
# daemon and their seeded runs, a minute and a half to start).
UI_STACK_MODULES = frozenset({"test_freshness.py", "test_instance_retention.py",
                              "test_ui_browser.py", "test_ui_daemon.py", "test_ui_graphql.py",
                              "test_ui_recovery.py"})


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; plain `pytest` runs without it
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two xdist workers. Session fixtures are per worker, and module
    fixtures are set up again wherever a module's tests go, so each test module runs on one
    worker, and the UI stack's modules all on the same one (their stack starts once)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "dagster-ui" if module.rpartition("/")[2] in UI_STACK_MODULES else module

    return ModulesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """A new module on the UI stack must join UI_STACK_MODULES, or two workers start it.

    Tests marked `fails_a_file_on_dagster_ui` leave a failed partition on the `dagster_ui`
    stack: they run after the other tests, some of which check that nothing the daemon did
    failed. Tests marked `prunes_dagster_ui` prune the stack's instance: they run after every
    other test, so the others (and the UI screenshots) see the daemon's runs whole.
    """
    for mark in ("fails_a_file_on_dagster_ui", "prunes_dagster_ui"):
        last = [item for item in items if item.get_closest_marker(mark)]
        items[:] = [item for item in items if item not in last] + last
    missing = sorted({item.path.name for item in items
                      if "dagster_ui" in getattr(item, "fixturenames", ())} - UI_STACK_MODULES)
    if missing:
        raise pytest.UsageError(f"{', '.join(missing)} use(s) the dagster_ui fixture: add to "
                                "UI_STACK_MODULES in credflow_assets_tests/conftest.py")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as (state, _, _):
        yield state


@pytest.fixture(scope="session")
def credflow_config(local_stack):
    return load_config(DEFAULT_CONFIG)


POSTGRES_SERVER_URL = os.environ.get(
    "CREDFLOW_TEST_POSTGRES_URL", "postgresql+psycopg2://credflow:credflow@127.0.0.1:5432"
)


@pytest.fixture
def postgres_url(request):
    """A fresh PostgreSQL database for one test (dropped afterwards); `make test` starts the server."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    name = f"credflow_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_SERVER_URL} (run `make test`, which starts "
            f"it, or set CREDFLOW_TEST_POSTGRES_URL): {error.orig}"
        )
    try:
        yield f"{POSTGRES_SERVER_URL}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
