"""The grading mode graded: broken copies of our server fail exactly their spec points.

Each copy is this repository's top-level `.py` files and `port.info` in a
temporary folder, with one defect put in by a text substitution (asserted to
have applied). The conformance suite runs against it as a grader runs it
(`pytest --server-dir=... --grade-report=... --junitxml=...`, in a subprocess,
restricted with -k to the points near the defect), and the report must fail
exactly the expected spec points and pass the rest. The three runs go in
parallel: together they take about as long as the slowest.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO_ROOT

from grading.plugin import START_UP_POINT

CHECK_MODULES = [
    importlib.import_module(f"grading.checks.{path.stem}")
    for path in sorted((REPO_ROOT / "grading" / "checks").glob("test_*.py"))
]
RUN_TIMEOUT = 240.0  # seconds for one restricted run of the suite against a broken copy
FILE_POINTS = "s1_pipelined or s2_1028_answers or s2_1029 or s2_1030 or s2_1031"


@dataclass(frozen=True)
class BrokenCopy:
    """A copy of our server with one defect, and what grading it must report."""

    name: str
    file: str  # the file of the copy the defect goes in
    pattern: str  # a regular expression matching exactly once in it
    replacement: str
    selection: str  # -k expression: the conformance tests to run
    failing: frozenset[str]  # the spec points that must fail; every other selected one passes
    not_run: bool = False  # the others are not run (the server does not start) instead of passing


BROKEN_COPIES = [
    BrokenCopy(
        "answers-1030",
        "handlers.py",
        # 1030 answered with 2104, as some clients expect and the protocol forbids (§7).
        r"(def handle_crc_retry\(.*?\n)    return None\n",
        r"\g<1>    return ResponseCode.ACK, ClientIdResponse(client.client_id).pack()\n",
        FILE_POINTS,
        frozenset({"§2 1030"}),
    ),
    BrokenCopy(
        "drops-surplus",
        "server.py",
        # Each request read through a fresh 1024-byte buffer: whatever one recv(1024) brought
        # beyond the request is lost, as with `data = sock.recv(1024)` per request.
        r"(    def _serve_one_request\(self\) -> bool:\n        \"\"\".*?\"\"\"\n)",
        r'\g<1>        self.rfile = self.connection.makefile("rb", 1024)\n',
        FILE_POINTS,
        frozenset({"§1 pipelining"}),
    ),
    BrokenCopy(
        "cannot-start",
        "server.py",
        # A dependency the grader's machine lacks: the server dies before it listens.
        r"(from __future__ import annotations\n)",
        r"\g<1>\nimport a_package_that_is_not_installed\n",
        "s1 or s2_1025",
        frozenset({START_UP_POINT}),
        not_run=True,
    ),
]


@dataclass
class GradingRun:
    copy: BrokenCopy
    report: Path
    junit: Path
    process: subprocess.Popen[str]
    _output: str | None = None

    def output(self) -> str:
        """What the grading pytest printed, once it has finished (bounded in time)."""
        if self._output is None:
            try:
                self._output, _ = self.process.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self._output, _ = self.process.communicate()
                pytest.fail(
                    f"grading {self.copy.name} took over {RUN_TIMEOUT:.0f} s:\n{self._output[-3000:]}"
                )
        return self._output


def make_broken_copy(copy: BrokenCopy, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for source in [*REPO_ROOT.glob("*.py"), REPO_ROOT / "port.info"]:
        shutil.copy2(source, folder / source.name)
    target = folder / copy.file
    text = target.read_text()
    patched, count = re.subn(copy.pattern, copy.replacement, text, flags=re.DOTALL)
    assert count == 1, f"{copy.name}: the substitution in {copy.file} applied {count} times, not once"
    target.write_text(patched)
    return folder


@pytest.fixture(scope="module")
def grading_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GradingRun]]:
    """Every broken copy graded at once, each by its own pytest in a subprocess."""
    runs = {}
    for copy in BROKEN_COPIES:
        work = tmp_path_factory.mktemp(copy.name)
        folder = make_broken_copy(copy, work / "submission")
        report, junit = work / "report.md", work / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--server-dir={folder}",
            f"--grade-report={report}",
            f"--junitxml={junit}",
            "-k",
            copy.selection,
            "grading/checks",
        ]
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        runs[copy.name] = GradingRun(copy, report, junit, process)
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate()  # reaped, its pipe closed


def report_rows(report: Path) -> list[tuple[str, str, str, str]]:
    """(spec point, check, result, detail) of each row of a grade report's table."""
    rows = []
    for line in report.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("§"):
            spec, check, result, detail = cells
            rows.append((spec, check, result.strip("*").lower(), detail))
    return rows


@pytest.mark.parametrize("copy", BROKEN_COPIES, ids=[copy.name for copy in BROKEN_COPIES])
def test_a_broken_copy_fails_exactly_its_spec_points(
    grading_runs: dict[str, GradingRun], copy: BrokenCopy
) -> None:
    run = grading_runs[copy.name]
    output = run.output()
    assert run.process.returncode == 1, f"pytest exits 1 when a test fails:\n{output[-3000:]}"
    assert run.report.is_file(), f"no grade report:\n{output[-3000:]}"

    rows = report_rows(run.report)
    assert rows, run.report.read_text()
    failed = {spec for spec, _, result, _ in rows if result == "fail"}
    assert failed == copy.failing, f"{copy.name}:\n{run.report.read_text()}\n{output[-3000:]}"
    others = {result for spec, _, result, _ in rows if spec not in copy.failing}
    assert others == ({"not run"} if copy.not_run else {"pass"}), run.report.read_text()
    for spec, _, result, detail in rows:
        if result == "fail":
            assert detail.startswith(f"{spec}:"), f"the failure's first line names its point: {detail}"

    failures = sum(result == "fail" for _, _, result, _ in rows)
    text = run.report.read_text(encoding="utf-8")
    assert f"{failures} fail" in text
    assert f"Spec points with a failure: {', '.join(sorted(copy.failing))}." in text

    suite = ElementTree.parse(run.junit).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", 0)) + int(suite.get("errors", 0)) == failures
    properties = {prop.get("value") for prop in suite.iter("property") if prop.get("name") == "spec"}
    assert copy.failing <= properties, "each test case carries its spec point in the JUnit XML"
    names = [str(case.get("name")) for case in suite.iter("testcase")]
    for term in copy.selection.split(" or "):
        assert any(term in name for name in names), f"-k {term!r} selects no test: renamed?"


def test_a_failed_start_shows_the_submissions_own_error(grading_runs: dict[str, GradingRun]) -> None:
    run = grading_runs["cannot-start"]
    output = run.output()
    [detail] = [detail for spec, _, result, detail in report_rows(run.report) if result == "fail"]
    assert "No module named 'a_package_that_is_not_installed'" in detail
    # Once, not once per test. (The short summary at the end repeats the one failure's message
    # whole where pytest does not truncate it: when CI is set.)
    details = output.split("short test summary info")[0]
    assert details.count("Traceback (most recent call last)") == 1, "its output is shown once, not per test"


def test_every_conformance_test_names_its_section() -> None:
    """`test_s2_1030_...` carries `@spec("§2 1030")`: the id and the report agree (ours-only tests: none)."""
    functions = {
        name: value
        for module in CHECK_MODULES
        for name, value in vars(module).items()
        if name.startswith("test_")
    }
    assert len(functions) > 40
    for name, function in functions.items():
        sections = [mark.args[0] for mark in getattr(function, "pytestmark", []) if mark.name == "spec"]
        if name.startswith("test_ours_"):
            assert sections == [], f"{name} tests our own decisions: no spec point"
            continue
        assert len(sections) == 1, f"{name}: one spec marker, not {sections}"
        number = str(sections[0]).removeprefix("§").split()[0]
        assert name.startswith(f"test_s{number}_"), f"{name} checks {sections[0]}: call it test_s{number}_..."
