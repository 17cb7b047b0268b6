"""Shared fixtures: a real Store and Processor on a temporary folder, or on PostgreSQL.

Test modules marked `pytestmark = pytest.mark.backends` run every test that takes
`config` (or `processor`) on both stores: SQLite in the test's folder, and a fresh schema
of the PostgreSQL database at PG_TEST_URL (scripts/test.sh starts one). With no
server there, the PostgreSQL half fails in CI (env CI set) and skips, loudly, elsewhere.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.mapping.loader import load_profiles
from bridge.processor import Processor
from bridge.store import AsyncStore, open_store, store_url

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PG_TEST_URL",
                        "postgresql://bridge_test:bridge_test@127.0.0.1:5432/bridge_test")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "backends: run the module's store tests on SQLite "
                            "and PostgreSQL")
    config.addinivalue_line("markers", "postgres_only(why): in a `backends` module, a test of "
                            "what only several instances on PostgreSQL have; `why` says what "
                            "covers SQLite")


def pytest_generate_tests(metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        # PostgreSQL-only behaviour (row locks, notifications, a lost connection) gets no
        # SQLite half, rather than a skipped one.
        only_pg = metafunc.definition.get_closest_marker("postgres_only")
        metafunc.parametrize("backend", ["postgres"] if only_pg else ["sqlite", "postgres"],
                             indirect=True)


def pg_schema_url() -> str:
    """A new, empty schema in the test database, as a store URL (its search_path)."""
    try:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {exc}")
        pytest.skip(reason=f"NO POSTGRESQL at {PG_URL} ({exc}): run scripts/test.sh to start one")
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{name}"


def drop_schema(url: str) -> None:
    import psycopg

    name = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_target(backend: str):
    """For tests that start a bridge themselves: a fresh PostgreSQL schema's URL (dropped
    afterwards) when the backend is postgres, else None (the SQLite file in data_dir)."""
    if backend == "postgres":
        url = pg_schema_url()
        yield url
        drop_schema(url)
    else:
        yield None


@pytest.fixture
def config(tmp_path: Path, backend: str):
    cfg = load_config(ROOT / "config.yaml", environ={"BRIDGE_DATA_DIR": str(tmp_path / "data")})
    if backend == "postgres":
        cfg.store.url = pg_schema_url()
        yield cfg
        drop_schema(cfg.store.url)
    else:
        yield cfg


@pytest.fixture
async def processor(config):
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    proc = Processor(config, load_profiles(config.mappings.dir), store)
    yield proc
    store.close()
