"""The grading mode graded: broken copies of our server fail exactly their own rows.

The copies are tests/broken_copies.py's (this repository's top-level `.py`
files in a temporary folder, one defect each, put in by text substitutions
asserted to apply). The conformance suite runs against each as a grader runs
it (`pytest --server-dir=... --grade-report=... --junitxml=...`, in a
subprocess), and the report must give exactly the copy's rows as `fail`,
`non-strict` and `not run`, and pass every other row it ran.

A whole run of the 59 checks costs about 45 s of CPU (mostly starting a
server per check): twelve of them would not fit CI's budget. So each copy's
run is restricted with -k to the checks of its own points, of the points it
names in `also` (those its defect could plausibly touch), of their
prerequisites (transitively), of the points that need its own points
(transitively), and of a fixed sample of unrelated points (SAMPLE_POINTS).
The twelve runs (178 checks in all) go in parallel subprocesses: the file
took 154 s and 183 s wall time, 136 s and 145 s of CPU, on the 2-core
machine at a load of 8 to 13. With -k, only the copies the selected tests
read are graded (`-k spins` grades one copy).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broken_copies import BROKEN_COPIES, COPIES, BrokenCopy, make_broken_copy, row_matches
from support import REPO_ROOT

from grading.harness import WINDOWS_ONLY, windows_only_use
from grading.plugin import START_UP_POINT

CHECK_MODULES = [
    importlib.import_module(f"grading.checks.{path.stem}")
    for path in sorted((REPO_ROOT / "grading" / "checks").glob("test_*.py"))
]
RUN_TIMEOUT = 300.0  # seconds for one restricted run of the suite against a broken copy
# Unrelated points every copy's run includes, cheap ones: a defect must not fail them either.
SAMPLE_POINTS = ("§1 version", "§3 empty name", "§5 SQL text")


@dataclass(frozen=True)
class Check:
    function: str  # test_s2_1030_...
    point: str
    needs: tuple[str, ...]


def checks() -> list[Check]:
    found = []
    for module in CHECK_MODULES:
        for name, value in vars(module).items():
            marks = [mark for mark in getattr(value, "pytestmark", []) if mark.name == "spec"]
            if name.startswith("test_") and marks:
                found.append(Check(name, str(marks[0].args[0]), tuple(marks[0].kwargs.get("needs", ()))))
    return found


def selected_checks(copy: BrokenCopy) -> list[Check]:
    """The checks a copy's run includes (see the module's docstring)."""
    every = checks()
    needs: dict[str, set[str]] = {}
    for check in every:
        needs.setdefault(check.point, set()).update(check.needs)
    points = copy.points() | set(copy.also) | set(SAMPLE_POINTS)
    dependents = copy.points()
    while True:
        more = {point for point, wanted in needs.items() if wanted & dependents} - dependents
        if not more:
            break
        dependents |= more
    points |= dependents
    while True:
        more = {need for point in points for need in needs.get(point, ())} - points
        if not more:
            break
        points |= more
    unknown = (copy.points() | set(copy.also)) - set(needs) - {START_UP_POINT}
    assert not unknown, f"{copy.name} names points no check has: {unknown}"
    return [check for check in every if check.point in points]


def selection(copy: BrokenCopy) -> str:
    return " or ".join(check.function for check in selected_checks(copy))


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


# The copies a test of this module reads besides the one it is parametrized with.
COPIES_READ = {
    "test_a_failed_start_shows_the_submissions_own_error": ("cannot-start",),
    "test_a_server_that_dies_is_reported_once": ("crashes-at-once",),
}


def copies_wanted(session: pytest.Session) -> list[BrokenCopy]:
    """The copies the selected tests of this module read (all of them, without -k)."""
    names = set()
    for item in session.items:
        if item.path != Path(__file__):
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "copy" in callspec.params:
            names.add(callspec.params["copy"].name)
        names.update(COPIES_READ.get(getattr(item, "originalname", item.name), ()))
    return [copy for copy in BROKEN_COPIES if copy.name in names]


@pytest.fixture(scope="module")
def grading_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, GradingRun]]:
    """Every broken copy the selected tests read graded at once, each by its own pytest in a subprocess."""
    runs = {}
    # Every copy is made before any run starts: a copy that cannot be made leaves no run behind.
    folders = {}
    for copy in copies_wanted(request.session):
        work = tmp_path_factory.mktemp(copy.name)
        folders[copy.name] = (copy, work, make_broken_copy(copy.name, work / copy.name))
    for copy, work, folder in folders.values():
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
            selection(copy),
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


@dataclass(frozen=True)
class ReportRow:
    spec: str
    check: str
    result: str
    detail: str


def report_rows(report: Path) -> list[ReportRow]:
    """The rows of a grade report's table."""
    rows = []
    for line in report.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("§"):
            spec, check, result, detail = cells
            rows.append(ReportRow(spec, check, result.strip("*").lower(), detail))
    return rows


def expected_result(copy: BrokenCopy, row: ReportRow) -> str:
    for result, patterns in (("fail", copy.fail), ("non-strict", copy.non_strict), ("not run", copy.not_run)):
        if any(row_matches(pattern, row.spec, row.check) for pattern in patterns):
            return result
    if any(row_matches(pattern, row.spec, row.check) for pattern in copy.passes):
        return "pass"
    return copy.others


def shown(rows: list[ReportRow]) -> str:
    return "\n".join(f"  {row.spec} | {row.check} | {row.result} | {row.detail[:150]}" for row in rows)


@pytest.mark.parametrize("copy", BROKEN_COPIES, ids=[copy.name for copy in BROKEN_COPIES])
def test_a_broken_copy_fails_exactly_its_own_rows(
    grading_runs: dict[str, GradingRun], copy: BrokenCopy
) -> None:
    run = grading_runs[copy.name]
    output = run.output()
    assert run.process.returncode == 1, f"pytest exits 1 when a check fails:\n{output[-3000:]}"
    assert run.report.is_file(), f"no grade report:\n{output[-3000:]}"
    rows = report_rows(run.report)
    assert rows, run.report.read_text()

    for pattern in copy.fail | copy.non_strict | copy.not_run | copy.passes:
        assert any(row_matches(pattern, row.spec, row.check) for row in rows), (
            f"{copy.name}: no row of {pattern!r} was run: renamed, or outside the selection?"
        )
    wrong = [row for row in rows if row.result != expected_result(copy, row)]
    assert not wrong, (
        f"{copy.name} ({copy.defect}): rows whose result is not the expected one:\n{shown(wrong)}\n"
        f"--- the whole report ---\n{run.report.read_text()}\n{output[-3000:]}"
    )

    for pattern, text in copy.messages.items():
        details = [row.detail for row in rows if row_matches(pattern, row.spec, row.check)]
        assert any(text in detail for detail in details), f"{copy.name}: {pattern}: {text!r} not in {details}"
    for pattern, text in copy.unsaid.items():
        details = [row.detail for row in rows if row_matches(pattern, row.spec, row.check)]
        assert not any(text in detail for detail in details), f"{copy.name}: {pattern}: {text!r} in {details}"
    for row in rows:
        if row.result in ("fail", "non-strict"):
            assert row.detail.startswith(f"{row.spec}:"), (
                f"a failure's first line names its point: {row.detail}"
            )

    failures = [row for row in rows if row.result == "fail"]
    text = run.report.read_text(encoding="utf-8")
    if failures:
        assert f"{len(failures)} fail" in text
    failed_points = sorted({row.spec for row in failures})
    assert f"Spec points with a failure: {', '.join(failed_points) or 'none'}." in text

    suite = ElementTree.parse(run.junit).getroot().find("testsuite")
    assert suite is not None
    pytest_failures = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    assert pytest_failures == len(failures) + sum(row.result == "non-strict" for row in rows)
    properties = {prop.get("value") for prop in suite.iter("property") if prop.get("name") == "spec"}
    assert {row.spec for row in failures} <= properties, "each test case carries its spec point in JUnit XML"
    names = {str(case.get("name")).partition("[")[0] for case in suite.iter("testcase")}
    assert names == {check.function for check in selected_checks(copy)}, "-k selects exactly the checks meant"


def test_a_failed_start_shows_the_submissions_own_error(grading_runs: dict[str, GradingRun]) -> None:
    run = grading_runs["cannot-start"]
    output = run.output()
    [detail] = [row.detail for row in report_rows(run.report) if row.result == "fail"]
    assert "No module named 'a_package_that_is_not_installed'" in detail
    # Once, not once per test. (The short summary at the end repeats the one failure's message
    # whole where pytest does not truncate it: when CI is set.)
    details = output.split("short test summary info")[0]
    assert details.count("Traceback (most recent call last)") == 1, "its output is shown once, not per test"


def test_a_server_that_dies_is_reported_once(grading_runs: dict[str, GradingRun]) -> None:
    """The first check where it died is its failure; the others say where to look."""
    rows = report_rows(grading_runs["crashes-at-once"].report)
    [died] = [row for row in rows if row.result == "fail"]
    others = {row.detail for row in rows if row.result == "not run"}
    assert others == {f"the server exits here too; see {died.spec} {died.check}"}, others


@pytest.mark.parametrize("name", sorted(COPIES))
def test_every_broken_copy_is_still_python(name: str, tmp_path: Path) -> None:
    """The copies edit our code by text: a change of that code's shape (a loop put one level
    deeper) must break this, at once, not a grading run that fails at start-up for the
    wrong reason. No copy is meant to fail to compile."""
    folder = make_broken_copy(name, tmp_path / name)
    for edited in sorted({edit.file for edit in COPIES[name].edits}):
        path = folder / edited
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_the_selection_of_each_copy_holds_its_rows_and_the_sample() -> None:
    """The restriction (see the module docstring) computed as meant: a known copy's selection."""
    functions = {check.function: check.point for check in selected_checks(COPIES["spins-after-vanishing"])}
    points = set(functions.values())
    assert {"§7 no spin", "§7 vanishing peer", *SAMPLE_POINTS} <= points  # own, dependent, sample
    assert {"§2 1025", "§2 1026", "§2 1028"} <= points  # prerequisites
    assert "§6 register" not in points and "§2 1030" not in points  # unrelated, not sampled
    for copy in BROKEN_COPIES:
        assert selected_checks(copy), copy.name


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


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("import msvcrt", "msvcrt, a Windows-only module"),
        ("import ctypes; ctypes.windll.kernel32", "ctypes.windll, a Windows-only name"),
        ("from ctypes import WinDLL", "ctypes.WinDLL, a Windows-only name"),
        ("import os; os.startfile('port.info')", "os.startfile, a Windows-only name"),
        ("import signal; signal.CTRL_C_EVENT", "signal.CTRL_C_EVENT, a Windows-only name"),
        (r"open('.\\config\\settings.txt')", r"'.\\config\\settings.txt', a Windows path"),
    ],
)
def test_a_start_up_failure_of_windows_only_code_is_named(code: str, named: str) -> None:
    # The traceback this machine's Python really prints, as a submission's server.py would.
    failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert failed.returncode != 0
    found = WINDOWS_ONLY.search(failed.stderr)
    assert found is not None, failed.stderr
    assert windows_only_use(found) == named


def test_an_ordinary_start_up_failure_is_not_taken_for_windows_code() -> None:
    failed = subprocess.run(
        [sys.executable, "-c", "import ctypes; ctypes.no_such_thing"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "has no attribute 'no_such_thing'" in failed.stderr
    assert WINDOWS_ONLY.search(failed.stderr) is None
