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
from typing import NoReturn

import pytest
from grading import START_UP_CHECK, START_UP_POINT, STARTED_SERVERS, STARTUP, target_of
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

    def start_up_failed(failure: str) -> NoReturn:
        """The first failure to start is this test's failure, filed under start-up; later ones skip."""
        if not startup.started:
            startup.failed_in = request.node.nodeid
            request.node.user_properties += [("spec", START_UP_POINT), ("check", START_UP_CHECK)]
        pytest.fail(f"{START_UP_POINT}: {failure}", pytrace=False)

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
            first = startup.failed_in.rpartition("::")[2]
            pytest.skip(f"the server does not start ({START_UP_POINT}: see {first})")
        if target.address is not None:
            if index:
                pytest.skip("needs a second server: --server gives one")
            problem = None if startup.started else _unreachable(target.address)
            if problem is not None:
                start_up_failed(problem)
            process = ExternalServer(*target.address)
        else:
            assert target.folder is not None
            folder = copy_submission(target.folder, tmp_path / f"submission{index}")
            process = ServerProcess(
                folder,
                folder,
                python=target.python,
                ours=False,
                log_path=tmp_path / f"submission{index}.log",
                label=f"{target.folder}/server.py",
            )
            failure: str | None = None
            try:
                process.start()
            except ServerStartError as err:
                failure = str(err)  # reported outside the handler: the output once, not chained twice
            if failure is not None:
                start_up_failed(failure)
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


# One RSA key for every test: generating a 1024-bit key costs tens of milliseconds.
RSA_KEY = generate_rsa_key()
