"""A throwaway PostgreSQL database on the machine's server (127.0.0.1:5432, trust auth), dropped afterwards."""

import contextlib
import uuid

import pytest

PG = "postgresql://postgres@127.0.0.1:5432"


@contextlib.contextmanager
def pg_database(prefix: str = "kd_test"):
    """Yields (its URL, its name, an autocommit admin connection); skips the test without a server."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{PG}/test", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as err:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {err}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}", name, admin
    finally:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")  # a test may have cut it off
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
