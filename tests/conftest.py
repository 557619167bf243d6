"""Fixtures: the server under test, started for each test, the corrupting proxy, client programs.

By default the server under test is this repository's `server.py`. With
`--server-dir PATH` it is the `server.py` of a submission folder (copied to a
temporary place for each test, with `port.info` naming a free port), run by
`--server-python` (default: this interpreter); with `--server HOST:PORT` one
that is already running. The options and the grade report are in grading.py.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grading import STARTED_SERVERS, STARTUP, target_of
from support import (
    READ_TIMEOUT,
    REPO_ROOT,
    ClientProgram,
    CorruptingProxy,
    ExternalServer,
    ServerProcess,
    ServerStartError,
    copy_submission,
    listening_host,
)

from client import FileTransferClient
from crypto_utils import generate_rsa_key

pytest_plugins = ["grading"]

ServerFactory = Callable[..., ServerProcess]
ProxyFactory = Callable[..., tuple[str, int]]


def _is_ours(config: pytest.Config) -> bool:
    return target_of(config).ours


def _unreachable(address: tuple[str, int]) -> str | None:
    """Why nothing answers at `address` (--server), or None if a server listens there."""
    host, port = address
    if host in ("127.0.0.1", "localhost", "::1"):
        found = listening_host(port) is not None
    else:
        try:
            socket.create_connection(address, timeout=READ_TIMEOUT).close()
            found = True
        except OSError:
            found = False
    return None if found else f"nothing listens on {host}:{port} (--server)"


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers on demand; `extra_args` only for ours (tests of our own options)."""
    target = target_of(request.config)
    startup = request.config.stash[STARTUP]
    started: list[ServerProcess] = []
    request.node.stash[STARTED_SERVERS] = started

    def start(extra_args: list[str] | None = None) -> ServerProcess:
        index = len(started)
        if target.ours:
            process = ServerProcess(REPO_ROOT, tmp_path / f"data{index}", extra_args=extra_args or [])
            process.start()
            started.append(process)
            return process
        if extra_args:
            pytest.skip("tests our own server's options")
        if startup.failed_in is not None and not startup.started:
            pytest.skip(f"the server does not start: see {startup.failed_in}")
        if target.address is not None:
            if index:
                pytest.skip("needs a second server: --server gives one")
            problem = None if startup.started else _unreachable(target.address)
            if problem is not None:
                startup.failed_in = request.node.nodeid
                pytest.fail(problem, pytrace=False)
            startup.started = True
            external = ExternalServer(*target.address)
            started.append(external)
            return external
        assert target.folder is not None
        folder = copy_submission(target.folder, tmp_path / f"submission{index}")
        process = ServerProcess(
            folder,
            folder,
            python=target.python,
            ours=False,
            log_path=tmp_path / f"submission{index}.log",
        )
        try:
            process.start()
        except ServerStartError as err:
            if not startup.started:
                startup.failed_in = request.node.nodeid
            pytest.fail(f"§5: {err}", pytrace=False)
        startup.started = True
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
def client_program(request: pytest.FixtureRequest) -> ClientProgram:
    """The client the client-level tests (§6) drive: client.py, or --client-exe."""
    return target_of(request.config).client


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
    with FileTransferClient(*server.address, timeout=READ_TIMEOUT) as client:
        name = unique_name()
        assert client.register(name) is not None
        client.send_public_key(name, RSA_KEY)
        yield client


# One RSA key for every test: generating a 1024-bit key costs tens of milliseconds.
RSA_KEY = generate_rsa_key()
