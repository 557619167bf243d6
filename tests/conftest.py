"""Fixtures of the tests of our own code; the server fixtures are the grading plugin's.

The `server`, `server_factory`, `client_program`, `corrupting_proxy` and
`unique_name` fixtures come from grading/plugin.py (loaded by pyproject.toml's
`-p grading.plugin`): by default the server under test is this repository's
`server.py`, on port 0 with a temporary data directory.
"""

from __future__ import annotations

import pytest

from grading.plugin import ProxyFactory, ServerFactory, target_of
from grading.wire import RSA_KEY

__all__ = ["RSA_KEY", "ProxyFactory", "ServerFactory"]


@pytest.fixture
def ours(request: pytest.FixtureRequest) -> None:
    """Marks a test of our implementation's internals: not run against a submission."""
    if not target_of(request.config).ours:
        pytest.skip("tests this implementation's internals, not the protocol")
