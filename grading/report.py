"""The grading reports: one Markdown report per submission, the summary matrix, the CSV.

A row is one check: its spec point, its name, its result and the first line
of its message. The results, worst first: error (the grading set-up failed),
fail, non-strict (a SHOULD missed: still conformant), not run (a prerequisite
failed, or the check cannot run against this target), pass.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields
from pathlib import Path

RESULTS = ("pass", "fail", "non-strict", "not run", "error")
MAX_MESSAGE = 300  # characters of a message's first line in a report


@dataclass
class Row:
    spec: str
    check: str
    result: str = "pass"
    message: str = ""


@dataclass
class SubmissionResult:
    name: str
    server: str
    client: str
    rows: list[Row] = field(default_factory=list)
    interrupted: bool = False
    error: str = ""  # why the grading of this submission could not run (then rows are empty)
    seconds: float = 0.0
    entry: str = ""  # the file that was run and how it was chosen: `src/main.py (found: ...)`

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SubmissionResult:
        """A result as the plugin's --grade-json wrote it (keys this version does not know are left)."""
        known = {item.name for item in fields(cls)} - {"rows"}
        raw_rows = data.get("rows", [])
        assert isinstance(raw_rows, list), f"rows: a list, not {type(raw_rows).__name__}"
        row_fields = {item.name for item in fields(Row)}
        rows = [
            Row(**{key: str(value) for key, value in row.items() if key in row_fields}) for row in raw_rows
        ]
        return cls(rows=rows, **{key: value for key, value in data.items() if key in known})  # type: ignore[arg-type]

    def count(self, result: str) -> int:
        return sum(row.result == result for row in self.rows)

    def total(self) -> str:
        if self.error:
            return f"not graded: {self.error}"
        counts = [f"{self.count(result)} {result}" for result in RESULTS if self.count(result)]
        return f"{self.count('pass')} of {len(self.rows)} checks passed ({', '.join(counts)})"

    def failed_points(self) -> list[str]:
        return sorted({row.spec for row in self.rows if row.result == "fail"}, key=section_order)


def first_line(longrepr: object, limit: int = MAX_MESSAGE) -> str:
    """The first line of a pytest report's failure or skip, without the exception's name."""
    if isinstance(longrepr, tuple):
        message = str(longrepr[2])
    else:
        crash = getattr(longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(longrepr or "")
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    for prefix in (
        "AssertionError: ",
        "Failed: ",
        "Skipped: ",
        "grading.harness.NoResponse: ",
        "NoResponse: ",
    ):
        line = line.removeprefix(prefix)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def section_order(spec: str) -> tuple[int, str]:
    """§1 before §2 ... before §10, then the rest of the point's name."""
    head, _, rest = spec.removeprefix("§").partition(" ")
    return (int(head) if head.isdigit() else 99, rest)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown(result: str) -> str:
    return f"**{result.upper()}**" if result in ("fail", "error") else result


def submission_markdown(result: SubmissionResult) -> str:
    """One submission's report: its failures first, then every row."""
    lines = [
        f"# Conformance to PROTOCOL.md: {result.name}",
        "",
        f"Server: {_cell(result.server)}  ",
        *([f"Entry point: {_cell(result.entry)}  "] if result.entry else []),
        f"Client for §6: {_cell(result.client)}",
        "",
    ]
    if result.error:
        return "\n".join([*lines, f"**Not graded: {_cell(result.error)}.** No row is charged to it.", ""])
    failures = [row for row in result.rows if row.result in ("fail", "error")]
    if failures:
        lines += ["## Failures", ""]
        lines += [f"- {row.spec} ({row.check}): {row.message}" for row in failures]
        lines.append("")
    lines += [
        "## Every check",
        "",
        "| spec point | check | result | first line of the message |",
        "|---|---|---|---|",
    ]
    for row in result.rows:
        lines.append(f"| {row.spec} | {_cell(row.check)} | {_shown(row.result)} | {_cell(row.message)} |")
    failed = result.failed_points()
    lines += [
        "",
        f"**Total: {result.total()}.**" + (" The run was interrupted." if result.interrupted else ""),
        "",
        f"Spec points with a failure: {', '.join(failed) if failed else 'none'}.",
        "",
    ]
    return "\n".join(lines)


def write_markdown(result: SubmissionResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(submission_markdown(result), encoding="utf-8")


def point_result(rows: list[Row]) -> str:
    """One spec point's cell: its worst check's result, with how many of its checks passed."""
    worst = max(rows, key=lambda row: ("pass", "not run", "non-strict", "fail", "error").index(row.result))
    passed = sum(row.result == "pass" for row in rows)
    if worst.result == "pass":
        return "pass"
    return f"{_shown(worst.result)} {passed}/{len(rows)}" if len(rows) > 1 else _shown(worst.result)


def summary_markdown(results: list[SubmissionResult]) -> str:
    """The matrix: every spec point x every submission, root failures listed first."""
    lines = ["# Grading summary", ""]
    roots = [
        (result.name, row) for result in results for row in result.rows if row.result in ("fail", "error")
    ]
    ungraded = [result for result in results if result.error]
    lines += ["## Root failures", ""]
    if not roots and not ungraded:
        lines.append("None: every check that ran passed.")
    lines += [f"- **{name}** {row.spec} ({row.check}): {row.message}" for name, row in roots]
    lines += [f"- **{result.name}** not graded: {result.error}" for result in ungraded]
    points = sorted({row.spec for result in results for row in result.rows}, key=section_order)
    failing = [
        point
        for point in points
        if any(row.spec == point and row.result == "fail" for result in results for row in result.rows)
    ]
    ordered = failing + [point for point in points if point not in failing]
    lines += [
        "",
        "## Matrix",
        "",
        "Spec points with a failure first. A cell with several checks gives its worst result and how "
        "many of its checks passed.",
        "",
        "| spec point | " + " | ".join(_cell(result.name) for result in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for point in ordered:
        cells = []
        for result in results:
            rows = [row for row in result.rows if row.spec == point]
            cells.append(point_result(rows) if rows else ("error" if result.error else ""))
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    totals = []
    for result in results:
        if result.error:
            totals.append("not graded")
        else:
            totals.append(
                f"{result.count('pass')}/{len(result.rows)} pass, {result.count('fail')} fail, "
                f"{result.count('non-strict')} non-strict, {result.count('not run')} not run"
            )
    lines += ["| **total** | " + " | ".join(totals) + " |", ""]
    return "\n".join(lines)


CSV_COLUMNS = ("submission", "spec_point", "check", "result", "message")


def write_csv(results: list[SubmissionResult], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            if result.error:
                writer.writerow((result.name, "", "", "error", result.error))
            for row in result.rows:
                writer.writerow((result.name, row.spec, row.check, row.result, row.message))
