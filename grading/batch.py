"""`python -m grading SUBMISSION_DIR... --out DIR`: many submission folders graded, and their summary.

Each folder is graded in isolation by its own pytest run of the checks
(`pytest grading/checks --server-dir=F --grade-json=...`, in a process group of
its own, from the repository's root), `--jobs` of them at a time. Each writes
`DIR/<name>.md`; the batch then writes `DIR/summary.md` (the matrix of
submissions x spec points, root failures first) and `DIR/summary.csv`. One
progress line per submission as it finishes.

Exit status: 0 when every submission was graded, whatever its results; 2 when
the grading itself could not run, for the whole batch (a bad option, found
before anything runs: one line on stderr) or for a submission (its pytest
crashed without a result, no entry point could be chosen, a set-up error in a
check): that submission gets an `error` row, never failures. Ctrl-C or SIGTERM
stops every grading run (SIGTERM to each process group, SIGKILL after a few
seconds), and with them every server they started; the exit status is then
128 + the signal's number.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

from grading.entry import find_entry
from grading.harness import POLL_INTERVAL, PPID_FIELD, REPO_ROOT, processes_where
from grading.plugin import resolve_python
from grading.report import SubmissionResult, summary_markdown, write_csv, write_markdown

PROG = "python -m grading"
WORK_DIR = ".work"  # inside --out: each submission's pytest output, result.json and temporary folders
STOP_GRACE = 5.0  # seconds a grading run gets to stop its servers after SIGTERM, before SIGKILL
PROBE_TIMEOUT = 120.0  # seconds for `PY -c pass` and for collecting the checks (a loaded machine)
RESERVED_NAMES = frozenset({"summary", WORK_DIR})  # names of the batch's own files in --out
PR_SET_CHILD_SUBREAPER = 36  # prctl(2): orphaned descendants are re-parented to this process
NO_TESTS_COLLECTED = 5  # pytest's exit status when nothing is selected


class UsageProblem(Exception):
    """A bad option or argument, found before anything runs: one line, exit status 2."""


class Stopped(Exception):
    """The batch got SIGTERM (Ctrl-C is KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Options:
    folders: list[Path]
    out: Path
    python: str
    entry: str | None
    client_exe: Path | None
    jobs: int
    keyword: str | None

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: `python -m grading: --out is required ...`."""
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    parse = _Parser(
        prog=PROG,
        description="Grade submission folders against PROTOCOL.md: one report each, a summary matrix "
        "and a CSV (docs/grading.md).",
    )
    parse.add_argument("folders", nargs="+", metavar="SUBMISSION_DIR", help="a submission folder")
    parse.add_argument("--out", required=True, metavar="DIR", help="where the reports go (e.g. reports/)")
    parse.add_argument(
        "--python", default=sys.executable, metavar="PY", help="the interpreter that runs the submissions"
    )
    parse.add_argument("--entry", metavar="NAME", help="the entry point in every folder (default: found)")
    parse.add_argument(
        "--client-exe", metavar="PATH", help="a client binary for the §6 checks (default: client.py)"
    )
    parse.add_argument("--jobs", type=int, default=1, metavar="N", help="submissions graded at once (1)")
    parse.add_argument("-k", dest="keyword", metavar="EXPR", help="only the checks pytest's -k selects")
    return parse


def options_from(argv: Sequence[str]) -> Options:
    """The command line checked whole: every problem is a UsageProblem before any grading starts."""
    args = parser().parse_args(argv)
    if args.jobs < 1:
        raise UsageProblem(f"--jobs {args.jobs}: at least 1")
    out = Path(args.out).absolute()
    folders = _checked_folders(args.folders, args.entry, out, args.out)
    python = _checked_python(args.python)
    client_exe = None
    if args.client_exe is not None:
        client_exe = Path(args.client_exe).absolute()
        if not client_exe.is_file() or not os.access(client_exe, os.X_OK):
            raise UsageProblem(f"--client-exe {args.client_exe}: not an executable file")
    _check_writable(out, args.out)
    options = Options(folders, out, python, args.entry, client_exe, args.jobs, args.keyword)
    if options.keyword is not None:
        _check_the_selection(options)
    return options


def _checked_folders(texts: list[str], entry: str | None, out: Path, out_text: str) -> list[Path]:
    """The submission folders: each exists (with --entry in it), apart from --out, its name its own."""
    folders = [Path(text).absolute() for text in texts]
    names: dict[str, Path] = {}
    for text, folder in zip(texts, folders, strict=True):
        if not folder.is_dir():
            raise UsageProblem(f"{text}: no such folder")
        if entry is not None and not (folder / entry).is_file():
            raise UsageProblem(f"{text}: there is no {entry} in it (--entry)")
        # Each check copies the folder: reports growing inside it would be copied, and graded.
        if out.resolve().is_relative_to(folder.resolve()):
            raise UsageProblem(f"--out {out_text} is inside the submission {text}: put the reports elsewhere")
        if folder.resolve().is_relative_to(out.resolve()):
            raise UsageProblem(f"{text} is inside --out {out_text}: it holds reports, not a submission")
        name = submission_name(folder)
        if name in RESERVED_NAMES:
            raise UsageProblem(
                f"{text}: a submission cannot be called {name} (its report would be the batch's)"
            )
        if name in names:
            raise UsageProblem(f"two submissions are called {name} ({names[name]} and {folder}): rename one")
        names[name] = folder
    return folders


def submission_name(folder: Path) -> str:
    return folder.resolve().name


def _checked_python(python: str) -> str:
    try:
        resolved = resolve_python(python)
    except ValueError as err:
        raise UsageProblem(f"--python {err}") from None
    try:
        probe = subprocess.run(  # noqa: S603  # the interpreter the grader named
            [resolved, "-c", "pass"], capture_output=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UsageProblem(f"--python {python}: does not run ({err})") from None
    if probe.returncode != 0:
        last = (probe.stderr.decode("utf-8", "replace").strip().splitlines() or ["(no output)"])[-1]
        raise UsageProblem(
            f"--python {python}: `{python} -c pass` exits with status {probe.returncode}: {last}"
        )
    return resolved


def _check_writable(out: Path, text: str) -> None:
    probe = out / WORK_DIR / f".probe-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageProblem(f"--out {text}: cannot write there ({err.strerror or err})") from None


def _check_the_selection(options: Options) -> None:
    """-k selects at least one check (and the checks collect in this interpreter)."""
    command = [*_pytest(options), "--collect-only"]
    try:
        collected = subprocess.run(  # noqa: S603  # this interpreter's pytest
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UsageProblem(f"the checks do not collect: {err}") from None
    output = (collected.stdout + collected.stderr).strip()
    if collected.returncode == NO_TESTS_COLLECTED and options.keyword is not None:
        raise UsageProblem(f"-k {options.keyword}: selects no check")
    if collected.returncode != 0:
        lines = output.splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]
        raise UsageProblem(f"the checks do not collect: {(errors or lines or ['(no output)'])[-1]}")


def _pytest(options: Options) -> list[str]:
    """`python -m pytest grading/checks` with the options every submission's run shares."""
    command = [sys.executable, "-m", "pytest", "grading/checks", "-p", "no:cacheprovider", "-q"]
    command.append(f"--server-python={options.python}")
    if options.client_exe is not None:
        command.append(f"--client-exe={options.client_exe}")
    if options.keyword is not None:
        command += ["-k", options.keyword]
    return command


# --- the grading runs -------------------------------------------------------------------


class Children:
    """The grading runs in progress: each in its own process group, all stopped on demand.

    On Linux the batch is a child subreaper (prctl(2)): a server whose pytest
    died without stopping it is re-parented here, and killed (`reap_orphans`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def become_subreaper(self) -> None:
        if sys.platform.startswith("linux"):
            with suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def run(self, command: list[str], log: Path) -> int | None:
        """Run one grading pytest to its end; its exit status, or None if the batch is stopping."""
        with self._lock:
            if self.stopping:
                return None
            with log.open("wb") as output:
                process = subprocess.Popen(  # noqa: S603  # our own pytest
                    command,
                    cwd=REPO_ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=os.name == "posix",
                )
            self._running.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)
            self.reap_orphans()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every run's process group; SIGKILL to what is left after `grace` seconds."""
        with self._lock:
            self.stopping = True
            running = list(self._running)
        for process in running:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(process.poll() is None for process in running) and time.monotonic() < deadline:
            threading.Event().wait(POLL_INTERVAL)
        for process in running:
            _signal_group(process.pid, signal.SIGKILL)  # whatever the run left in its group
            with suppress(subprocess.TimeoutExpired):
                process.wait(STOP_GRACE)
        self.reap_orphans()

    def reap_orphans(self) -> None:
        """Kill and reap what a finished run left behind and was re-parented to the batch.

        Under the lock that `run` starts its pytest under: a run starting now is never taken
        for an orphan.
        """
        own_group = os.getpgrp()
        with self._lock:
            ours = {process.pid for process in self._running}
            for pid in processes_where(PPID_FIELD, os.getpid()):
                if pid in ours:
                    continue
                with suppress(OSError):
                    group = os.getpgid(pid)
                    if group != own_group:
                        _signal_group(group, signal.SIGKILL)
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _signal_group(group: int, signum: int) -> None:
    if os.name == "posix":
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


@dataclass
class Batch:
    options: Options
    children: Children = field(default_factory=Children)
    print_line: Callable[[str], None] = print

    def grade(self, folder: Path) -> SubmissionResult | None:
        """One submission graded by its own pytest run; None if the batch stopped first."""
        started = time.monotonic()
        name = submission_name(folder)
        entry = find_entry(folder, self.options.entry)
        if entry.path is None:
            return self._error(folder, str(entry.problem), time.monotonic() - started)
        work = self.options.work / name
        result_path = work / "result.json"
        log = work / "pytest.log"
        try:
            work.mkdir(parents=True, exist_ok=True)
            result_path.unlink(missing_ok=True)  # never a previous batch's result
        except OSError as err:
            return self._error(folder, f"cannot prepare {work}: {err.strerror or err}", 0.0)
        command = [
            *_pytest(self.options),
            f"--server-dir={folder}",
            f"--entry={entry.path}",
            f"--grade-json={result_path}",
            f"--basetemp={work / 'tmp'}",
        ]
        status = self.children.run(command, log)
        if status is None:
            return None
        result = _result_of(result_path, status)
        if result is None:
            return self._error(folder, _why_pytest_failed(status, log), time.monotonic() - started)
        result.name = name
        result.entry = entry.describe()
        result.seconds = time.monotonic() - started
        return result

    def _error(self, folder: Path, error: str, seconds: float) -> SubmissionResult:
        """A submission whose grading could not run: one error row, nothing charged to it."""
        return SubmissionResult(
            name=submission_name(folder), server=str(folder), client="", error=error, seconds=seconds
        )

    def run(self) -> int:
        """Grade every folder; the exit status (0, 2, or 128 + a signal that stopped the batch)."""
        total = len(self.options.folders)
        results: dict[Path, SubmissionResult] = {}
        stopped_by: int | None = None
        executor = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="grade")
        futures: dict[Future[SubmissionResult | None], Path] = {
            executor.submit(self.grade, folder): folder for folder in self.options.folders
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = self._outcome(future, futures[future])
                    if result is not None:
                        results[futures[future]] = result
                        self._finished(result, len(results), total)
        except KeyboardInterrupt:
            stopped_by = signal.SIGINT
        except Stopped as stop:
            stopped_by = stop.signum
        if stopped_by is not None:
            _ignore_further_signals()
            self.print_line(
                f"{PROG}: stopped by {signal.Signals(stopped_by).name}: stopping every grading run"
            )
            self.children.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        ordered = []
        for folder in self.options.folders:
            result = results.get(folder)
            if result is None:
                result = self._error(folder, "the batch was stopped before this submission was graded", 0.0)
            ordered.append(result)
        (self.options.out / "summary.md").write_text(summary_markdown(ordered), encoding="utf-8")
        write_csv(ordered, self.options.out / "summary.csv")
        self.print_line(f"summary: {self.options.out / 'summary.md'}, {self.options.out / 'summary.csv'}")
        if stopped_by is not None:
            return 128 + stopped_by
        graded = all(not result.error and result.count("error") == 0 for result in ordered)
        return 0 if graded else 2

    def _outcome(self, future: Future[SubmissionResult | None], folder: Path) -> SubmissionResult | None:
        """A grading's result; a bug of the batch itself is that submission's error, not a crash."""
        try:
            return future.result()
        except Exception as err:  # reported, and the other submissions go on
            return self._error(folder, f"the batch failed on it: {type(err).__name__}: {err}", 0.0)

    def _finished(self, result: SubmissionResult, index: int, total: int) -> None:
        write_markdown(result, self.options.out / f"{result.name}.md")
        self.print_line(f"[{index}/{total}] {result.name}: {progress(result)} ({result.seconds:.0f} s)")


def progress(result: SubmissionResult) -> str:
    """`52 pass, 2 fail, 1 not run`, or why it was not graded."""
    if result.error:
        return f"not graded: {result.error}"
    counts = [
        f"{result.count(verdict)} {verdict}"
        for verdict in ("pass", "fail", "non-strict", "not run", "error")
        if result.count(verdict) or verdict == "pass"
    ]
    return ", ".join(counts)


def _result_of(path: Path, status: int) -> SubmissionResult | None:
    """The plugin's result, if pytest ran the checks to their end (status 0 or 1) and wrote it."""
    if status not in (0, 1) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SubmissionResult.from_json(data)
    except (OSError, ValueError, TypeError, AssertionError):
        return None


def _why_pytest_failed(status: int, log: Path) -> str:
    """`pytest exited with status 3 without a result: INTERNALERROR ... (see .work/bob/pytest.log)`."""
    try:
        lines = [line.strip() for line in log.read_text("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [
        line
        for line in lines
        if line.startswith(("ERROR", "INTERNALERROR", "E   ")) or ": error: " in line  # argparse's
    ]
    errors = [line for line in errors if not line.startswith("ERROR: usage:")] or errors
    last = (errors or lines or ["(no output)"])[-1]
    label = "its error" if errors else "its last line"
    if status < 0:
        how = f"the grading pytest was killed by {signal.Signals(-status).name}"
    else:
        how = f"the grading pytest exited with status {status}"
    return f"{how} without a result; {label}: {last} (its output: {log})"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def _ignore_further_signals() -> None:
    """While the batch stops its runs, a second Ctrl-C or SIGTERM does not cut that short."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        options = options_from(sys.argv[1:] if argv is None else argv)
    except UsageProblem as problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # stopped while checking the command line: nothing ran yet
    except Stopped as stop:
        return 128 + stop.signum
    batch = Batch(options, print_line=lambda line: print(line, flush=True))
    batch.children.become_subreaper()
    return batch.run()
