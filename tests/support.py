"""Test support: our server in a subprocess, raw connections, a corrupting proxy, client runs.

The runner and the wire tools are the grading tool's (grading/harness.py):
the tests of our own code use the same ones the checks use. This module adds
what only those tests need.
"""

from __future__ import annotations

from grading.harness import (
    CLIENT_TIMEOUT,
    LISTENING_LINE,
    POLL_INTERVAL,
    READ_TIMEOUT,
    REPO_ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ClientProgram,
    ClientRun,
    CorruptingProxy,
    ExternalServer,
    NoResponse,
    RawConnection,
    RawResponse,
    ServerProcess,
    ServerStartError,
    copy_submission,
    free_port,
    listening_host,
    wait_until,
)

SERVER_PY = REPO_ROOT / "server.py"

__all__ = [
    "CLIENT_TIMEOUT",
    "LISTENING_LINE",
    "POLL_INTERVAL",
    "READ_TIMEOUT",
    "REPO_ROOT",
    "SERVER_PY",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "ClientProgram",
    "ClientRun",
    "CorruptingProxy",
    "ExternalServer",
    "NoResponse",
    "RawConnection",
    "RawResponse",
    "ServerProcess",
    "ServerStartError",
    "copy_submission",
    "free_port",
    "listening_host",
    "wait_until",
]
