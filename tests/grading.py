"""Grading mode: the end-to-end conformance tests against any implementation, and a report.

A pytest plugin (loaded by conftest.py). Without options the conformance tests
run against this repository's server, as CI runs them. With

    --server-dir PATH      a submission folder: each test copies it, writes port.info with a
                           free port and runs `python server.py` there (--server-python names
                           the interpreter, for a submission with its own virtual environment)
    --server HOST:PORT     a server that is already running (tests that must restart it or
                           read its database are reported as not run, with the reason)
    --client-exe PATH      the client-level tests (§6) drive this client binary through
                           transfer.info instead of the reference client.py
    --grade-report FILE    a Markdown table: spec point, check, result, first line of the failure

only the conformance tests (those with a `spec` marker) run: the rest test our
own code, not the protocol. Each conformance test gets a bounded time.

PYTEST_DONT_REWRITE: conftest.py imports this module before pytest loads it as
a plugin, and it has no assertions for pytest to rewrite.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import ClientProgram, ServerProcess

SPEC_MARKER = "spec"
START_UP_POINT = "§5 start-up"  # where a submission that does not start is reported
START_UP_CHECK = "python server.py starts from its folder and listens on the port in port.info"
TEST_TIMEOUT = 60.0  # seconds for one conformance test, set up and torn down, unless --timeout says
MAX_DETAIL = 160  # characters of a failure's first line in the report


@dataclass(frozen=True)
class Target:
    """What the tests run against: ours, a submission folder, or a running server's address."""

    folder: Path | None = None
    python: str = sys.executable
    address: tuple[str, int] | None = None
    client: ClientProgram = field(default_factory=ClientProgram.reference)

    @property
    def ours(self) -> bool:
        return self.folder is None and self.address is None

    def describe(self) -> str:
        if self.folder is not None:
            return f"{self.folder}/server.py (run by {self.python})"
        if self.address is not None:
            return f"the server at {self.address[0]}:{self.address[1]}"
        return "this repository's server.py"


@dataclass
class StartupRecord:
    """Whether a submission has ever started in this session, and the first failure if not.

    A submission that cannot start fails the first test that starts it, with its
    output; every later test is reported as not run rather than as one more error.
    """

    started: bool = False
    failed_in: str | None = None


TARGET = pytest.StashKey[Target]()
STARTUP = pytest.StashKey[StartupRecord]()
STARTED_SERVERS = pytest.StashKey[list[ServerProcess]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "grading a submission (the conformance tests against another server)")
    group.addoption(
        "--server-dir",
        type=Path,
        metavar="PATH",
        help="test the server.py in this submission folder instead of ours",
    )
    group.addoption(
        "--server-python",
        default=sys.executable,
        metavar="PYTHON",
        help="interpreter that runs --server-dir's server.py (default: this one)",
    )
    group.addoption("--server", metavar="HOST:PORT", help="test a server that is already running")
    group.addoption(
        "--client-exe",
        type=Path,
        metavar="PATH",
        help="client binary for the client-level tests (§6), driven through transfer.info",
    )
    group.addoption("--grade-report", type=Path, metavar="FILE", help="write a Markdown grade report")


def _target(config: pytest.Config) -> Target:
    """The options checked and turned into a Target; a usage error names what is wrong."""
    folder: Path | None = config.getoption("--server-dir")
    address_text: str | None = config.getoption("--server")
    python: str = config.getoption("--server-python")
    client_exe: Path | None = config.getoption("--client-exe")
    if folder is not None and address_text is not None:
        raise pytest.UsageError("--server-dir and --server name two servers: give one")
    if folder is not None:
        folder = folder.absolute()
        if not (folder / "server.py").is_file():
            raise pytest.UsageError(f"--server-dir {folder}: there is no server.py in it")
    if os.sep in python or (os.altsep and os.altsep in python):
        # absolute(), not resolve(): a virtual environment's python is a symlink that must stay one.
        python = str(Path(python).absolute())
    if shutil.which(python) is None:
        raise pytest.UsageError(f"--server-python {python}: not an executable")
    address = None
    if address_text is not None:
        host, colon, port = address_text.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise pytest.UsageError(f"--server {address_text}: expected HOST:PORT")
        address = (host.strip("[]"), int(port))
    client = ClientProgram.reference()
    if client_exe is not None:
        if not client_exe.is_file() or not os.access(client_exe, os.X_OK):
            raise pytest.UsageError(f"--client-exe {client_exe}: not an executable file")
        client = ClientProgram.executable(client_exe)
    return Target(folder, python, address, client)


def pytest_configure(config: pytest.Config) -> None:
    target = _target(config)
    config.stash[TARGET] = target
    config.stash[STARTUP] = StartupRecord()
    report_path: Path | None = config.getoption("--grade-report")
    if report_path is not None:
        config.pluginmanager.register(GradeReport(report_path, target), "grade-report")


def target_of(config: pytest.Config) -> Target:
    return config.stash[TARGET]


def pytest_report_header(config: pytest.Config) -> list[str]:
    target = target_of(config)
    return [f"server under test: {target.describe()}", f"client for §6: {target.client.description}"]


def spec_section(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(SPEC_MARKER)
    return str(marker.args[0]) if marker is not None and marker.args else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against another server only the conformance tests run; each gets a bounded time."""
    if not target_of(config).ours:
        deselected = [item for item in items if spec_section(item) is None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if spec_section(item) is not None]
    can_time_out = config.pluginmanager.hasplugin("timeout")
    timeout_given = can_time_out and config.getoption("timeout") is not None
    for item in items:
        section = spec_section(item)
        if section is None:
            continue
        item.user_properties.append(("spec", section))  # a <property> in --junitxml's output
        if can_time_out and not timeout_given and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test whose server died on the way says so, with the server's last output."""
    report = yield
    if report.failed:
        for server in item.stash.get(STARTED_SERVERS, []):
            status = server.exit_status()
            if status is not None:
                tail = "\n".join(server.log_text().splitlines()[-30:])
                report.sections.append((f"server exited with status {status}", tail))
                report.user_properties.append(("server_exit", status))
    return report


# --- the report ----------------------------------------------------------------------------


@dataclass
class Row:
    spec: str
    check: str
    result: str = "pass"  # pass, fail, not run
    detail: str = ""


class GradeReport:
    """Collects the conformance tests' outcomes; writes the Markdown table at the end."""

    def __init__(self, path: Path, target: Target) -> None:
        self.path = path
        self.target = target
        self.rows: dict[str, Row] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        spec = properties.get("spec")
        if spec is None:
            return
        check = str(properties.get("check") or _check_name(report.nodeid))
        row = self.rows.setdefault(report.nodeid, Row(str(spec), check))
        row.spec, row.check = str(spec), check
        if report.failed and row.result != "fail":
            row.result = "fail"
            row.detail = _first_line(report)
            if not row.detail.startswith("§"):
                row.detail = f"{row.spec}: {row.detail}"  # an exception, not an assertion: name the point
            if "server_exit" in properties:
                row.detail += f" (the server exited with status {properties['server_exit']})"
        elif report.skipped and row.result == "pass":
            row.result = "not run"
            row.detail = _first_line(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.markdown(), encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(f"grade report: {self.path} ({self.total()})")

    def total(self) -> str:
        rows = list(self.rows.values())
        passed = sum(row.result == "pass" for row in rows)
        failed = sum(row.result == "fail" for row in rows)
        not_run = sum(row.result == "not run" for row in rows)
        return f"{passed} of {len(rows)} checks passed, {failed} failed, {not_run} not run"

    def markdown(self) -> str:
        rows = list(self.rows.values())
        failed_points = sorted({row.spec for row in rows if row.result == "fail"}, key=_section_order)
        lines = [
            "# Conformance to PROTOCOL.md",
            "",
            f"Server: {_cell(self.target.describe())}  ",
            f"Client for §6: {_cell(self.target.client.description)}",
            "",
            "| spec point | check | result | first line of the failure |",
            "|---|---|---|---|",
        ]
        for row in sorted(rows, key=lambda row: _section_order(row.spec)):
            result = f"**{row.result.upper()}**" if row.result == "fail" else row.result
            lines.append(f"| {row.spec} | {_cell(row.check)} | {result} | {_cell(row.detail)} |")
        lines += [
            "",
            f"**Total: {self.total()}.**",
            "",
            f"Spec points with a failure: {', '.join(failed_points) if failed_points else 'none'}.",
            "",
        ]
        return "\n".join(lines)


def _check_name(nodeid: str) -> str:
    """`tests/x.py::test_s2_1028_stores_the_file[17]` -> `stores the file [17]`."""
    name = nodeid.rpartition("::")[2]
    name, bracket, params = name.partition("[")
    words = name.removeprefix("test_").split("_")
    if words and words[0].startswith("s") and words[0][1:].isdigit():
        words = words[1:]  # the section, which has its own column
        if words and words[0].isdigit():
            words = words[1:]
    return " ".join(words) + (f" [{params}" if bracket else "")


def _first_line(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        message = longrepr[2]
    else:
        crash = getattr(longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(longrepr)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    for prefix in ("AssertionError: ", "Failed: ", "Skipped: ", "support.NoResponse: "):
        line = line.removeprefix(prefix)
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_order(spec: str) -> tuple[int, str]:
    """§1 before §2 ... before §10, then the rest of the point's name."""
    head, _, rest = spec.removeprefix("§").partition(" ")
    return (int(head) if head.isdigit() else 99, rest)
