"""Fixtures of the unit tests."""

import pytest
from bundles import make_bundle


@pytest.fixture
def tiny_bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")
