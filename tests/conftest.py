"""Fixtures: the server under test, started for each test, and the corrupting proxy.

By default the server under test is this repository's `server.py`. With
`--server-dir PATH` it is the `server.py` of a submission folder (copied to a
temporary place for each test, with `port.info` naming a free port), run by
`--server-python` (default: this interpreter).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT, CorruptingProxy, ServerProcess, copy_submission

from client import FileTransferClient
from crypto_utils import generate_rsa_key

ServerFactory = Callable[..., ServerProcess]
ProxyFactory = Callable[..., tuple[str, int]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("server under test")
    group.addoption("--server-dir", type=Path, help="test the server.py in this folder instead of ours")
    group.addoption("--server-python", default=sys.executable, help="interpreter for --server-dir")


def _is_ours(config: pytest.Config) -> bool:
    return config.getoption("--server-dir") is None


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers on demand; `extra_args` only for ours (tests of our own options)."""
    started: list[ServerProcess] = []

    def start(extra_args: list[str] | None = None) -> ServerProcess:
        index = len(started)
        submission = request.config.getoption("--server-dir")
        if submission is None:
            process = ServerProcess(REPO_ROOT, tmp_path / f"data{index}", extra_args=extra_args or [])
        else:
            if extra_args:
                pytest.skip("tests our own server's options")
            folder = copy_submission(submission, tmp_path / f"submission{index}")
            process = ServerProcess(
                folder, folder, python=request.config.getoption("--server-python"), ours=False
            )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory()


@pytest.fixture
def ours(request: pytest.FixtureRequest) -> None:
    """Marks a test of our implementation's internals: not run against a submission."""
    if not _is_ours(request.config):
        pytest.skip("tests this implementation's internals, not the protocol")


@pytest.fixture
def corrupting_proxy() -> Iterator[ProxyFactory]:
    proxies: list[CorruptingProxy] = []

    def start(server: ServerProcess, corrupt: int | None = None) -> tuple[str, int]:
        proxy = CorruptingProxy(server.address, corrupt)
        proxies.append(proxy)
        return proxy.address

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def unique_name() -> Callable[[], str]:
    return lambda: f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connected_client(server: ServerProcess, unique_name: Callable[[], str]) -> Iterator[FileTransferClient]:
    """A client registered under a fresh name, with its AES key, on an open connection."""
    with FileTransferClient(*server.address) as client:
        name = unique_name()
        assert client.register(name) is not None
        client.send_public_key(name, RSA_KEY)
        yield client


# One RSA key for every test: generating a 1024-bit key costs tens of milliseconds.
RSA_KEY = generate_rsa_key()
