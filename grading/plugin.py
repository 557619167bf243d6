"""The pytest plugin of the grading tool: the checks' options, fixtures, verdicts and report.

Loaded with `-p grading.plugin` (pyproject.toml's addopts; `python -m grading`
passes it too). Without options the checks (grading/checks/, each marked with
the spec point it tests) run against this repository's server, as CI runs
them. With

    --server-dir PATH      a submission folder: each check copies it, writes port.info with a
                           free port (the digits alone) and runs `python ENTRY` there
    --entry NAME           the entry point, relative to the folder (default: server.py, else the
                           module with a __main__ guard that binds a socket: grading/entry.py)
    --server-python PY     the interpreter that runs it (a submission's own virtual environment)
    --server HOST:PORT     a server that is already running (checks that must restart it or
                           read its database or folder are not run, with the reason)
    --client-exe PATH      the client-level checks (§6) drive this client binary through
                           transfer.info instead of the reference client.py
    --grade-report FILE    a Markdown report: spec point, check, result, first line of the failure
    --grade-json FILE      the same rows as JSON, for `python -m grading`

only the checks run: the other tests of this repository test our own code.

Verdicts (the `result` of a row): pass; fail; non-strict (a check of a SHOULD,
`strict=False` in its marker, that failed: still conformant); not run (a
prerequisite point failed, the server does not start, or the check needs what
--server cannot give); error (the grading set-up failed: not the submission's
fault). A check declares the points it needs (`needs=`); when one of them has
failed, the check is not run: "needs §2 1029, which failed". A server that dies
during a check is reported once, in that check's row, with its last output;
the later checks in which it dies too are not run.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

import pytest

from grading.database import SubmissionDatabase
from grading.entry import DEFAULT_ENTRY, EntryPoint, find_entry
from grading.harness import (
    READ_TIMEOUT,
    REPO_ROOT,
    SENT_CODES,
    ClientProgram,
    CorruptingProxy,
    ExternalServer,
    HarnessError,
    ServerProcess,
    ServerStartError,
    copy_submission,
    listening_host,
    stop_every_server,
)
from grading.report import Row, SubmissionResult, first_line, section_order, write_markdown

SPEC_MARKER = "spec"
START_UP_POINT = "§5 start-up"  # where a submission that does not start is reported
START_UP_CHECK = "the entry point starts from its folder and listens on the port in port.info"
CHECK_TIMEOUT = 60.0  # seconds for one check, set-up and tear-down included, unless --timeout says
CHECKS_DIR = Path(__file__).resolve().parent / "checks"

ServerFactory = Callable[..., ServerProcess]
ProxyFactory = Callable[..., tuple[str, int]]


@dataclass(frozen=True)
class Target:
    """What the checks run against: ours, a submission folder, or a running server's address."""

    folder: Path | None = None
    python: str = sys.executable
    address: tuple[str, int] | None = None
    client: ClientProgram = field(default_factory=ClientProgram.reference)
    entry: str = DEFAULT_ENTRY
    entry_how: str = ""  # how the entry point was chosen (grading/entry.py)

    @property
    def ours(self) -> bool:
        return self.folder is None and self.address is None

    def describe(self) -> str:
        if self.folder is not None:
            return f"{self.folder}/{self.entry} (run by {self.python})"
        if self.address is not None:
            return f"the server at {self.address[0]}:{self.address[1]}"
        return "this repository's server.py"


@dataclass
class RunState:
    """What one grading session has learnt so far: start-up, deaths, failed points."""

    started: bool = False
    start_failed_in: str | None = None
    death: str | None = None  # the check in which the server first died
    failed_points: dict[str, str] = field(default_factory=dict)  # point -> the check that failed
    rows: dict[str, Row] = field(default_factory=dict)  # node id -> row


TARGET = pytest.StashKey[Target]()
STATE = pytest.StashKey[RunState]()
STARTED_SERVERS = pytest.StashKey[list[ServerProcess]]()
SUBMISSION_FAULT = pytest.StashKey[bool]()  # set when a set-up failure is the submission's (start-up)
TMP_PATH = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "grading a submission (the checks against another server)")
    group.addoption("--server-dir", metavar="PATH", help="grade the server in this submission folder")
    group.addoption(
        "--entry",
        metavar="NAME",
        help="its entry point (default: server.py, else the module with a __main__ guard that listens)",
    )
    group.addoption(
        "--server-python",
        default=sys.executable,
        metavar="PYTHON",
        help="interpreter that runs the submission (default: this one)",
    )
    group.addoption("--server", metavar="HOST:PORT", help="grade a server that is already running")
    group.addoption(
        "--client-exe",
        metavar="PATH",
        help="client binary for the client-level checks (§6), via transfer.info",
    )
    group.addoption("--grade-report", metavar="FILE", help="write a Markdown grade report")
    group.addoption("--grade-json", metavar="FILE", help="write the report's rows as JSON")


def _usage(message: str) -> NoReturn:
    raise pytest.UsageError(message)


def resolve_python(python: str) -> str:
    """An interpreter named by path (kept a symlink: a virtual environment's) or found on PATH."""
    if os.sep in python or (os.altsep and os.altsep in python):
        python = str(Path(python).absolute())
    found = shutil.which(python)
    if found is None:
        raise ValueError(f"{python}: no such interpreter")
    return python if os.sep in python else found


def _target(config: pytest.Config) -> Target:
    """The options checked and turned into a Target; a usage error names what is wrong."""
    folder_text: str | None = config.getoption("--server-dir")
    address_text: str | None = config.getoption("--server")
    named_entry: str | None = config.getoption("--entry")
    client_exe: str | None = config.getoption("--client-exe")
    if folder_text is not None and address_text is not None:
        _usage("--server-dir and --server name two servers: give one")
    try:
        python = resolve_python(config.getoption("--server-python"))
    except ValueError as err:
        _usage(f"--server-python {err}")
    folder = None
    entry = EntryPoint(DEFAULT_ENTRY, "the usual name")
    if folder_text is not None:
        folder = Path(folder_text).absolute()
        if not folder.is_dir():
            _usage(f"--server-dir {folder_text}: no such folder")
        entry = find_entry(folder, named_entry)
        if entry.path is None:
            _usage(f"--server-dir {folder_text}: {entry.problem}")
    address = None
    if address_text is not None:
        host, colon, port = address_text.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            _usage(f"--server {address_text}: expected HOST:PORT")
        address = (host.strip("[]"), int(port))
    client = ClientProgram.reference()
    if client_exe is not None:
        path = Path(client_exe)
        if not path.is_file() or not os.access(path, os.X_OK):
            _usage(f"--client-exe {client_exe}: not an executable file")
        client = ClientProgram.executable(path)
    return Target(folder, python, address, client, entry.path or DEFAULT_ENTRY, entry.how)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM of a grading run: every server it started is stopped, then the run unwinds."""
    stop_every_server()
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "spec(point, needs=(), strict=True, timeout=None): the PROTOCOL.md point a check tests, "
        "the points it needs, whether it is a MUST, its own time bound",
    )
    config.stash[TARGET] = _target(config)
    config.stash[STATE] = RunState()
    atexit.register(stop_every_server)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _stop_on_signal)


def target_of(config: pytest.Config) -> Target:
    return config.stash[TARGET]


def pytest_report_header(config: pytest.Config) -> list[str]:
    target = target_of(config)
    return [
        f"server under test: {target.describe()}",
        f"client for §6: {target.client.description}",
        f"each check is bounded to {CHECK_TIMEOUT:.0f} s (a few, marked, to more; --timeout N sets all)",
    ]


def spec_marker(item: pytest.Item) -> pytest.Mark | None:
    marker = item.get_closest_marker(SPEC_MARKER)
    return marker if marker is not None and marker.args else None


def spec_point(item: pytest.Item) -> str | None:
    marker = spec_marker(item)
    return str(marker.args[0]) if marker is not None else None


def needs_of(item: pytest.Item) -> tuple[str, ...]:
    marker = spec_marker(item)
    return tuple(marker.kwargs.get("needs", ())) if marker is not None else ()


def _depth(point: str, needs: dict[str, set[str]], seen: frozenset[str] = frozenset()) -> int:
    """How many prerequisites deep a point is: checks run after the points they need."""
    if point in seen:
        raise pytest.UsageError(f"the checks' prerequisites form a cycle through {point}")
    return 1 + max((_depth(need, needs, seen | {point}) for need in needs.get(point, ())), default=-1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against another server only the checks run, prerequisites first, each with a time bound."""
    if not target_of(config).ours:
        deselected = [item for item in items if spec_point(item) is None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if spec_point(item) is not None]
    needs: dict[str, set[str]] = {}
    for item in items:
        point = spec_point(item)
        if point is not None:
            needs.setdefault(point, set()).update(needs_of(item))
    order = {item.nodeid: index for index, item in enumerate(items)}
    depths = {point: _depth(point, needs) for point in needs}

    def key(item: pytest.Item) -> tuple[int, int]:
        point = spec_point(item)
        return (depths[point] if point is not None else -1, order[item.nodeid])

    items.sort(key=key)
    can_time_out = config.pluginmanager.hasplugin("timeout")
    timeout_given = can_time_out and config.getoption("timeout") is not None
    for item in items:
        marker = spec_marker(item)
        if marker is None:
            continue
        item.user_properties.append(("spec", spec_point(item)))  # a <property> in --junitxml's output
        if can_time_out and not timeout_given and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(marker.kwargs.get("timeout", CHECK_TIMEOUT)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A check whose prerequisite failed is not run: it could not mean anything."""
    state = item.config.stash[STATE]
    SENT_CODES.clear()
    for need in needs_of(item):
        if need in state.failed_points:
            pytest.skip(f"needs {need}, which failed")


# --- fixtures ---------------------------------------------------------------------------


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
    """Start servers on demand.

    `extra_args` only for ours (tests of our own options); `port_info` the text
    of port.info for a port; `record_writes` a log of the server's socket writes.
    """
    target = target_of(request.config)
    state = request.config.stash[STATE]
    started: list[ServerProcess] = []
    attempts = itertools.count()  # a copy's folder per start, a failed one included (§5 port.info)
    request.node.stash[STARTED_SERVERS] = started
    request.node.stash[TMP_PATH] = tmp_path

    def start_up_failed(failure: str) -> NoReturn:
        """The first failure to start is this check's failure, filed under start-up; later ones skip."""
        if not state.started:
            state.start_failed_in = request.node.nodeid
            request.node.user_properties += [("spec", START_UP_POINT), ("check", START_UP_CHECK)]
        request.node.stash[SUBMISSION_FAULT] = True
        pytest.fail(f"{START_UP_POINT}: {failure}", pytrace=False)

    def start(
        extra_args: list[str] | None = None,
        port_info: Callable[[int], str] = str,
        record_writes: Path | None = None,
        foreign: bool = False,
    ) -> ServerProcess:
        index = len(started)
        process: ServerProcess
        nest = tmp_path / "a" / "b"  # two levels inside tmp_path: an escape by ../../ stays visible
        if target.ours and not foreign:
            process = ServerProcess(
                # tmp_path/dataN: tests of our own server prepare that folder before it starts.
                REPO_ROOT,
                tmp_path / f"data{index}",
                extra_args=extra_args or [],
                record_writes=record_writes,
            )
            process.start()
            started.append(process)
            return process
        if extra_args:
            pytest.skip("tests our own server's options")
        if state.start_failed_in is not None and not state.started:
            pytest.skip(f"needs {START_UP_POINT}, which failed")
        if target.address is not None:
            if index or record_writes or port_info is not str:
                pytest.skip("needs to start the server itself: --server gives only its address")
            problem = None if state.started else _unreachable(target.address)
            if problem is not None:
                start_up_failed(problem)
            process = ExternalServer(*target.address)
        else:
            source = target.folder if target.folder is not None else _our_files(tmp_path / "ours")
            folder = copy_submission(source, nest / f"submission{next(attempts)}")
            process = ServerProcess(
                folder,
                folder,
                python=target.python,
                ours=False,
                log_path=tmp_path / f"{folder.name}.log",
                label=f"{source}/{target.entry}",
                entry=target.entry,
                port_info=port_info,
                record_writes=record_writes,
            )
            failure: str | None = None
            try:
                process.start()
            except ServerStartError as err:
                failure = str(err)  # reported outside the handler: the output once, not chained twice
            if failure is not None:
                if port_info is not str:  # the check's own point (§5 port.info), not start-up's
                    raise AssertionError(failure.split("\n--- output", 1)[0])
                start_up_failed(failure)
        state.started = True
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _our_files(folder: Path) -> Path:
    """This repository's server as a submission folder: for checks that need `python server.py`."""
    if not folder.exists():
        folder.mkdir(parents=True)
        for path in REPO_ROOT.glob("*.py"):
            shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory()


@pytest.fixture
def db(server: ServerProcess) -> SubmissionDatabase:
    """The server's database, read leniently (grading/database.py)."""
    return SubmissionDatabase(server.db_path)


@pytest.fixture
def client_program(request: pytest.FixtureRequest) -> ClientProgram:
    """The client the client-level checks (§6) drive: client.py, or --client-exe."""
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


# --- verdicts ------------------------------------------------------------------------


def _died(item: pytest.Item) -> tuple[int, ServerProcess] | None:
    for process in item.stash.get(STARTED_SERVERS, []):
        status = process.exit_status()
        if status is not None:
            return status, process
    return None


def _last_output(process: ServerProcess) -> str:
    lines = [line.strip() for line in process.log_text().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The verdict of a check: the server's death reported once, harness errors as errors."""
    report = yield
    point = spec_point(item)
    if point is None or not (report.failed or report.skipped):
        return report
    state = item.config.stash[STATE]
    if report.failed and call.excinfo is not None and call.excinfo.errisinstance(HarnessError):
        report.user_properties.append(("verdict", "error"))
        return report
    if report.failed and report.when != "call" and not item.stash.get(SUBMISSION_FAULT, False):
        report.user_properties.append(("verdict", "error"))  # a fixture of ours failed: tmp_path, ...
        return report
    died = _died(item) if report.failed else None
    if died is not None:
        status, process = died
        tail = "\n".join(process.log_text().splitlines()[-30:])
        report.sections.append((f"server exited with status {status}", tail))
        after = f"after a {SENT_CODES[-1]}" if SENT_CODES else "during the check"
        message = f"the server exited with status {status} {after}; its last output: {_last_output(process)}"
        if state.death is None:
            state.death = item.nodeid
            report.user_properties.append(("message", f"{point}: {message}"))
        else:
            report.outcome = "skipped"
            first = state.rows[state.death]
            report.longrepr = (
                str(item.path),
                0,
                f"the server exits here too; see {first.spec} {first.check}",
            )
    return report


def _verdict(report: pytest.TestReport, item_strict: bool) -> str:
    properties = dict(report.user_properties)
    if "verdict" in properties:
        return str(properties["verdict"])
    if report.skipped:
        return "not run"
    if report.failed:
        return "fail" if item_strict else "non-strict"
    return "pass"


class Collector:
    """Turns the checks' reports into rows, and writes the reports at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        self._record(item, report)
        return report

    def _record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        point = spec_point(item)
        if point is None:
            return
        state = self.config.stash[STATE]
        properties = dict(report.user_properties)
        spec = str(properties.get("spec") or point)
        check = str(properties.get("check") or check_name(item.nodeid))
        row = state.rows.setdefault(item.nodeid, Row(spec, check))
        row.spec, row.check = spec, check
        marker = spec_marker(item)
        strict = bool(marker.kwargs.get("strict", True)) if marker is not None else True
        verdict = _verdict(report, strict)
        if verdict == "pass" or _rank(verdict) <= _rank(row.result):
            return
        row.result = verdict
        message = str(properties.get("message") or first_line(report.longrepr))
        message = message.removeprefix("Skipped: ")
        if message.startswith("Timeout >"):
            message = (
                f"the check did not finish within {message.removeprefix('Timeout >')} (does the server hang?)"
            )
        if not message.startswith("§") and verdict in ("fail", "non-strict"):
            message = f"{spec}: {message}"  # an exception, not an assertion: name the point
        row.message = self._normalised(message, item)
        if verdict == "fail":
            state.failed_points.setdefault(spec, item.nodeid)

    def _normalised(self, message: str, item: pytest.Item) -> str:
        """Paths of this run's temporary folders replaced by what they are."""
        tmp_path = item.stash.get(TMP_PATH, None)
        target = target_of(self.config)
        if tmp_path is not None:
            message = re.sub(re.escape(str(tmp_path)) + r"/a/b/submission\d+", "<submission>", message)
            message = re.sub(re.escape(str(tmp_path)) + r"/data\d+", "<data>", message)
            message = message.replace(str(tmp_path), "<tmp>")
        if target.folder is not None:
            message = message.replace(str(target.folder), "<submission>")
        return message

    def result(self) -> SubmissionResult:
        target = target_of(self.config)
        rows = sorted(self.config.stash[STATE].rows.values(), key=lambda row: section_order(row.spec))
        return SubmissionResult(
            name=target.folder.name if target.folder is not None else "ours",
            server=target.describe(),
            client=target.client.description,
            rows=rows,
            entry=f"{target.entry} ({target.entry_how})" if target.folder is not None else "",
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        result = self.result()
        result.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        markdown: str | None = self.config.getoption("--grade-report")
        if markdown:
            write_markdown(result, Path(markdown))
        json_path: str | None = self.config.getoption("--grade-json")
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(asdict(result), indent=1), encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        markdown = self.config.getoption("--grade-report")
        if markdown:
            terminalreporter.write_line(f"grade report: {markdown} ({self.result().total()})")


_RANKS = {"pass": 0, "not run": 1, "non-strict": 2, "fail": 3, "error": 4}


def _rank(result: str) -> int:
    return _RANKS[result]


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.pluginmanager.register(Collector(session.config), "grading-collector")


def check_name(nodeid: str) -> str:
    """`grading/checks/x.py::test_s2_1028_stores_the_file[17]` -> `stores the file [17]`."""
    name = nodeid.rpartition("::")[2]
    name, bracket, params = name.partition("[")
    words = name.removeprefix("test_").split("_")
    if words and words[0].startswith("s") and words[0][1:].isdigit():
        words = words[1:]  # the section, which has its own column
        if words and words[0].isdigit():
            words = words[1:]
    return " ".join(words) + (f" [{params}" if bracket else "")
