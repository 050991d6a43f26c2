"""Fixtures of the serving tests: bundles built once, a shared project and `kd serve` for the read-mostly tests."""

import pytest
from harness import Server, make_serving_bundle, new_project


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Two real bundles (different weights): registered as versions 1 and 2 by each project."""
    base = tmp_path_factory.mktemp("bundles")
    return [make_serving_bundle(base / f"b{seed}", seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def shared(tmp_path_factory, bundles):
    """A project with @champion = 1 and one `kd serve` on it (SQLite log) for the tests that do not move aliases."""
    root = new_project(tmp_path_factory.mktemp("shared"), bundles)
    server = Server(root, "--poll-seconds", "1")
    yield root, server
    server.stop()
