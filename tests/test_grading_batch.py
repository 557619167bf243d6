"""The batch command, `python -m grading SUBMISSION_DIR... --out DIR`, run for real.

Small submission folders (copies of our own server, some with one defect put in
by a text substitution, asserted to have applied) are graded by real runs of
the command in a subprocess, from a working folder that is not the
repository's, with -k restricting the checks to two to keep it fast. The
tests read what a grader reads: the progress lines, the exit status, the
per-submission reports, summary.md and summary.csv. The signal tests wait on
an observable condition (the submission's server listening, found in /proc)
before they stop or kill anything, and then look in /proc for survivors.
The entry-point discovery (grading/entry.py) is tested on its own on small
folders. The three batch runs go in parallel; the file takes about a minute.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import REPO_ROOT, wait_until

from grading.batch import _why_pytest_failed
from grading.entry import find_entry
from grading.harness import listening_ports_of
from grading.report import CSV_COLUMNS, RESULTS

SELECTION = "s1_responses or s2_1030"  # two checks: §1 version, §2 1030
BATCH_TIMEOUT = 240.0  # seconds for one batch run to finish
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (.*) \((\d+) s\)$")
HANG = (
    # Each request is read and never answered: the check waits its 10 s, the server listens meanwhile.
    r'(        """Read, dispatch and answer one request\. False when the connection should close\."""\n)',
    r"\g<1>        threading.Event().wait()\n",
)


def copy_of_ours(folder: Path, *defects: tuple[str, str], file: str = "server.py") -> Path:
    """Our server's top-level modules and port.info in `folder`, with each defect substituted once."""
    folder.mkdir(parents=True)
    for source in [*REPO_ROOT.glob("*.py"), REPO_ROOT / "port.info"]:
        shutil.copy2(source, folder / source.name)
    for pattern, replacement in defects:
        target = folder / file
        patched, count = re.subn(pattern, replacement, target.read_text(), flags=re.DOTALL)
        assert count == 1, f"the substitution {pattern!r} applied {count} times in {target}, not once"
        target.write_text(patched)
    return folder


def at_the_top(line: str) -> tuple[str, str]:
    """A defect: `line` run when server.py is imported, before anything else."""
    return r"(from __future__ import annotations\n)", rf"\g<1>\n{line}\n"


ANSWERS_1030 = (
    r"(def handle_crc_retry\(.*?\n)    return None\n",
    r"\g<1>    return ResponseCode.ACK, ClientIdResponse(client.client_id).pack()\n",
)


@dataclass
class BatchRun:
    """`python -m grading` in a subprocess, run from `cwd` (not the repository)."""

    cwd: Path
    out: Path
    process: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""
    watcher: threading.Thread | None = None
    seen: dict[str, int] = field(default_factory=dict)  # what a watcher observed: name -> pid

    def wait(self) -> int:
        if self.process.returncode is None:
            try:
                self.stdout, self.stderr = self.process.communicate(timeout=BATCH_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.stdout, self.stderr = self.process.communicate()
                pytest.fail(f"the batch took over {BATCH_TIMEOUT:.0f} s:\n{self.stdout}\n{self.stderr}")
        if self.watcher is not None:
            self.watcher.join(BATCH_TIMEOUT)
        return self.process.returncode

    def report(self, name: str) -> str:
        return (self.out / f"{name}.md").read_text(encoding="utf-8")

    def csv_rows(self) -> list[dict[str, str]]:
        with (self.out / "summary.csv").open(encoding="utf-8", newline="") as source:
            reader = csv.DictReader(source)
            assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
            return list(reader)

    def progress(self) -> dict[str, str]:
        """submission -> what its progress line says, the lines checked for their form and order."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("[")]
        found = {}
        for index, line in enumerate(lines, start=1):
            match = PROGRESS.match(line)
            assert match, f"a progress line: {line!r}"
            assert (int(match.group(1)), int(match.group(2))) == (index, len(lines)), line
            found[match.group(3)] = match.group(4)
        return found


def start_batch(cwd: Path, *args: str) -> BatchRun:
    """The command as a grader types it, from `cwd`; the package found through PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "grading", *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    out_index = args.index("--out") + 1 if "--out" in args else None
    out = cwd / args[out_index] if out_index is not None else cwd
    return BatchRun(cwd, out, process)


def run_batch(cwd: Path, *args: str) -> BatchRun:
    run = start_batch(cwd, *args)
    run.wait()
    return run


# --- /proc ----------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def processes_under(folder: Path) -> list[int]:
    """Live processes whose working folder is inside `folder` (a submission's server runs in its copy)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd.is_relative_to(folder) and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def listening_server(work: Path) -> int | None:
    """The pid of a server that runs in `work` (a submission's temporary folders) and listens."""
    for pid in processes_under(work):
        if listening_ports_of(pid):
            return pid
    return None


def grading_pytest_of(batch_pid: int, name: str) -> int | None:
    """The batch's child pytest that grades the submission `name`."""
    for pid in children(batch_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(f"/.work/{name}/result.json".encode()) for part in command):
            return pid
    return None


# --- the batch runs, started together -------------------------------------------------------


def _signal_when_listening(run: BatchRun, name: str, signum: int, to_the_batch: bool) -> None:
    """Once the server of `name` listens: `signum` to the batch, or to its grading pytest.

    The pytest killed: a grading run that dies (the OOM killer, a crash). What was seen and
    signalled goes into `run.seen`.
    """
    work = run.out / ".work" / name

    def server_listens() -> bool:
        pid = listening_server(work)
        if pid is not None:
            run.seen["server"] = pid
        return pid is not None

    if not wait_until(server_listens, timeout=BATCH_TIMEOUT / 2):
        return
    pytest_pid = grading_pytest_of(run.process.pid, name)
    if pytest_pid is not None:
        run.seen["pytest"] = pytest_pid
        os.kill(run.process.pid if to_the_batch else pytest_pid, signum)


def _watched(run: BatchRun, name: str, signum: int, to_the_batch: bool) -> BatchRun:
    run.watcher = threading.Thread(
        target=_signal_when_listening, args=(run, name, signum, to_the_batch), daemon=True
    )
    run.watcher.start()
    return run


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BatchRun]]:
    # Every submission graded: one passes, one fails one point, one is found at src/main.py,
    # two cannot run here (a Windows-only module, a Windows path).
    graded = tmp_path_factory.mktemp("graded")
    subs = graded / "subs"
    copy_of_ours(subs / "alice")
    copy_of_ours(subs / "bob", ANSWERS_1030, file="handlers.py")
    carol = copy_of_ours(subs / "carol" / "src")
    (carol / "server.py").rename(carol / "main.py")
    (carol / "port.info").unlink()
    copy_of_ours(subs / "dave", at_the_top("import msvcrt"))
    copy_of_ours(subs / "erin", at_the_top(r'open(".\\config\\settings.txt").close()'))
    names = ["alice", "bob", "carol", "dave", "erin"]
    runs = {
        "graded": start_batch(
            graded, *(f"subs/{name}" for name in names), "--out", "reports", "--jobs", "3", "-k", SELECTION
        ),
    }
    # The grading could not run for any of these: a pytest that dies, a folder with two entry
    # points, one with none.
    failing = tmp_path_factory.mktemp("failing")
    copy_of_ours(failing / "gina", HANG)
    (failing / "twins").mkdir()
    for name in ("app.py", "run.py"):
        (failing / "twins" / name).write_text(LISTENS)
    (failing / "notes").mkdir()
    (failing / "notes" / "client.py").write_text(
        'import socket\n\nif __name__ == "__main__":\n    socket.create_connection(("x", 1))\n'
    )
    run = start_batch(failing, "gina", "twins", "notes", "--out", "out", "-k", SELECTION)
    runs["failing"] = _watched(run, "gina", signal.SIGKILL, to_the_batch=False)
    # Batches stopped while a server runs: the first submission's hangs (its check waits), the
    # second is never graded. No -k: the first check is §1 version.
    for signum in (signal.SIGTERM, signal.SIGINT):
        stopped = tmp_path_factory.mktemp(signal.Signals(signum).name)
        copy_of_ours(stopped / "hangs", HANG)
        copy_of_ours(stopped / "later")
        run = start_batch(stopped, "hangs", "later", "--out", "out")
        runs[signal.Signals(signum).name] = _watched(run, "hangs", signum, to_the_batch=True)
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
        run.process.communicate()
        for pid in processes_under(run.cwd):  # what a failing test found left running
            os.kill(pid, signal.SIGKILL)


LISTENS = 'import socket\n\nif __name__ == "__main__":\n    socket.create_server(("127.0.0.1", 0)).accept()\n'


# --- every submission graded: exit 0 ----------------------------------------------------------


def test_a_batch_grades_every_folder_and_exits_0(batches: dict[str, BatchRun]) -> None:
    run = batches["graded"]
    assert run.wait() == 0, f"{run.stdout}\n{run.stderr}"
    progress = run.progress()
    assert sorted(progress) == ["alice", "bob", "carol", "dave", "erin"], run.stdout
    assert progress["alice"] == "2 pass"
    assert progress["bob"] == "1 pass, 1 fail"
    assert progress["carol"] == "2 pass"
    assert progress["dave"] == progress["erin"] == "0 pass, 1 fail, 1 not run"
    for name in progress:
        assert f"# Conformance to PROTOCOL.md: {name}" in run.report(name)


def test_each_submission_fails_exactly_its_own_point(batches: dict[str, BatchRun]) -> None:
    run = batches["graded"]
    run.wait()
    rows = run.csv_rows()
    assert {row["result"] for row in rows} <= set(RESULTS)
    verdicts = {(row["submission"], row["spec_point"]): row["result"] for row in rows}
    assert verdicts == {
        ("alice", "§1 version"): "pass",
        ("alice", "§2 1030"): "pass",
        ("bob", "§1 version"): "pass",
        ("bob", "§2 1030"): "fail",
        ("carol", "§1 version"): "pass",
        ("carol", "§2 1030"): "pass",
        # A server that does not start: one row says why, the other check is not run.
        ("dave", "§5 start-up"): "fail",
        ("dave", "§2 1030"): "not run",
        ("erin", "§5 start-up"): "fail",
        ("erin", "§2 1030"): "not run",
    }
    messages = {(row["submission"], row["spec_point"]): row["message"] for row in rows}
    assert messages[("bob", "§2 1030")].startswith("§2 1030: no response is sent to a 1030")
    assert messages[("dave", "§2 1030")] == "needs §5 start-up, which failed"
    assert len(rows) == len(verdicts), "one row per check"


def test_a_windows_only_submission_is_one_row_that_says_it_cannot_run_here(
    batches: dict[str, BatchRun],
) -> None:
    run = batches["graded"]
    run.wait()
    messages = {row["submission"]: row["message"] for row in run.csv_rows() if row["result"] == "fail"}
    assert messages["dave"] == (
        "§5 start-up: server.py cannot run on this machine: it uses msvcrt, a Windows-only module (status 1)"
    )
    assert messages["erin"].startswith("§5 start-up: server.py cannot run on this machine: it uses "), (
        messages
    )
    assert "a Windows path" in messages["erin"] and r"'.\\config\\settings.txt'" in messages["erin"]


def test_the_report_names_the_entry_point_it_found(batches: dict[str, BatchRun]) -> None:
    run = batches["graded"]
    run.wait()
    carol = run.report("carol")
    assert "/subs/carol/src/main.py (run by " in carol
    assert (
        'Entry point: src/main.py (found: the only module with an `if __name__ == "__main__":` guard' in carol
    )
    assert "Entry point: server.py (the usual name)" in run.report("alice")


def test_the_summary_lists_root_failures_first_then_the_matrix(batches: dict[str, BatchRun]) -> None:
    run = batches["graded"]
    run.wait()
    summary = (run.out / "summary.md").read_text(encoding="utf-8")
    roots, _, matrix = summary.partition("## Matrix")
    assert matrix, summary
    root_lines = [line for line in roots.splitlines() if line.startswith("- ")]
    assert [line.split(" (")[0] for line in root_lines] == [
        "- **bob** §2 1030",
        "- **dave** §5 start-up",
        "- **erin** §5 start-up",
    ], roots
    table = [line for line in matrix.splitlines() if line.startswith("|")]
    assert table[0] == "| spec point | alice | bob | carol | dave | erin |"
    cells = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in table[2:]}
    assert cells["§2 1030"] == ["pass", "**FAIL**", "pass", "not run", "not run |"]
    failing_first = [line.split(" | ")[0] for line in table[2:]]
    assert failing_first[:2] == ["| §2 1030", "| §5 start-up"], "spec points with a failure first"
    assert cells["**total**"][1] == "1/2 pass, 1 fail, 0 non-strict, 0 not run"


# --- the grading could not run: exit 2, error rows --------------------------------------------


def test_a_grading_that_cannot_run_is_an_error_and_exit_2(batches: dict[str, BatchRun]) -> None:
    run = batches["failing"]
    assert run.wait() == 2, f"{run.stdout}\n{run.stderr}"
    assert "pytest" in run.seen, "the watcher killed gina's grading pytest once its server listened"
    rows = run.csv_rows()
    assert [(row["submission"], row["result"]) for row in rows] == [
        ("gina", "error"),
        ("twins", "error"),
        ("notes", "error"),
    ]
    messages = {row["submission"]: row["message"] for row in rows}
    assert messages["gina"].startswith("the grading pytest was killed by SIGKILL without a result; its "), (
        messages
    )
    assert messages["twins"] == (
        'no single entry point: app.py and run.py each have an `if __name__ == "__main__":` guard and '
        "bind a socket (name one with --entry)"
    )
    assert messages["notes"] == (
        'no entry point: no server.py, and no module with an `if __name__ == "__main__":` guard that binds '
        "a socket; client.py has a guard but binds no socket (name it with --entry)"
    )
    progress = run.progress()
    assert progress == {name: f"not graded: {message}" for name, message in messages.items()}
    for name in messages:
        assert "No row is charged to it." in run.report(name)
        assert "**FAIL**" not in run.report(name)


def test_a_server_left_by_a_dead_grading_run_is_killed(batches: dict[str, BatchRun]) -> None:
    run = batches["failing"]
    run.wait()
    assert "server" in run.seen
    assert not alive(run.seen["server"]), "the batch kills the server its dead pytest left running"
    assert processes_under(run.out) == []


# --- stopping a batch -----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_batch_leaves_no_server_running(batches: dict[str, BatchRun], signum: int) -> None:
    run = batches[signal.Signals(signum).name]
    status = run.wait()
    assert {"server", "pytest"} <= set(run.seen), "the watcher saw the server listen, then signalled"
    assert status == 128 + signum, f"{run.stdout}\n{run.stderr}"
    assert f"stopped by {signal.Signals(signum).name}: stopping every grading run" in run.stdout
    assert not alive(run.seen["pytest"]), "the grading pytest is stopped"
    assert not alive(run.seen["server"]), "the submission's server is stopped"
    assert processes_under(run.cwd) == []
    rows = {row["submission"]: row for row in run.csv_rows()}
    assert rows["later"]["result"] == "error"
    assert rows["later"]["message"] == "the batch was stopped before this submission was graded"


# --- what is checked before anything runs: one line, exit 2, nothing written ------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing", "--out", "out"], "python -m grading: missing: no such folder"),
        (
            ["sub", "--out", "out", "--python", "python3.99"],
            "python -m grading: --python python3.99: no such interpreter",
        ),
        (
            ["sub", "--out", "afile/out"],
            "python -m grading: --out afile/out: cannot write there (Not a directory)",
        ),
        (
            ["sub", "--out", "out", "--entry", "main.py"],
            "python -m grading: sub: there is no main.py in it (--entry)",
        ),
        (["sub", "--out", "out", "--jobs", "0"], "python -m grading: --jobs 0: at least 1"),
        (["sub", "other/sub", "--out", "out"], "python -m grading: two submissions are called sub"),
        (
            ["sub", "--out", "out", "-k", "no_check_is_called_this"],
            "python -m grading: -k no_check_is_called_this: selects no check",
        ),
        (["sub"], "python -m grading: the following arguments are required: --out (see --help)"),
        (
            ["sub", "--out", "sub/reports"],
            "python -m grading: --out sub/reports is inside the submission sub: put the reports elsewhere",
        ),
        (["out/old", "--out", "out"], "python -m grading: out/old is inside --out out: it holds reports"),
    ],
    ids=[
        "folder",
        "python",
        "out",
        "entry",
        "jobs",
        "names",
        "selection",
        "required",
        "out-inside",
        "inside-out",
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "server.py").write_text(LISTENS)
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "afile").write_text("")
    (tmp_path / "out" / "old").mkdir(parents=True)
    run = run_batch(tmp_path, *arguments)
    assert run.process.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), run.stderr
    assert run.stdout == ""
    assert not list(tmp_path.rglob("*.md")) and not list(tmp_path.rglob("summary.csv")), "nothing is written"


def test_the_clone_s_grading_folder_runs_as_a_script_from_any_folder(tmp_path: Path) -> None:
    # `python CLONE/grading ...` from the grader's own folder, with nothing on PYTHONPATH: the
    # package is found, and -k is checked against the clone's checks (pytest run from the clone).
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "server.py").write_text(LISTENS)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    command = [
        sys.executable,
        str(REPO_ROOT / "grading"),
        "sub",
        "--out",
        "out",
        "-k",
        "no_check_is_called_this",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BATCH_TIMEOUT, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "python -m grading: -k no_check_is_called_this: selects no check"


def test_a_bad_python_that_exists_but_does_not_run(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "server.py").write_text(LISTENS)
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no encodings module' >&2\nexit 3\n")
    broken.chmod(0o755)
    run = run_batch(tmp_path, "sub", "--out", "out", "--python", "./python")
    assert run.process.returncode == 2
    assert run.stderr.strip() == (
        "python -m grading: --python ./python: `./python -c pass` exits with status 3: no encodings module"
    )


@pytest.mark.parametrize(
    ("status", "output", "expected"),
    [
        (
            4,
            "ERROR: usage: __main__.py [options]\n__main__.py: error: unrecognized arguments: --x\n"
            "  inifile: None\n",
            "the grading pytest exited with status 4 without a result; its error: __main__.py: error: "
            "unrecognized arguments: --x",
        ),
        (
            3,
            "collected 5 items\nINTERNALERROR> Traceback\nINTERNALERROR> IsADirectoryError: result.json\n",
            "the grading pytest exited with status 3 without a result; its error: INTERNALERROR> "
            "IsADirectoryError: result.json",
        ),
        (
            -9,
            "collected 5 items\n",
            "the grading pytest was killed by SIGKILL without a result; its last line: collected 5 items",
        ),
        (-15, "", "the grading pytest was killed by SIGTERM without a result; its last line: (no output)"),
    ],
)
def test_a_pytest_that_ends_without_a_result_is_said_in_one_line(
    tmp_path: Path, status: int, output: str, expected: str
) -> None:
    log = tmp_path / "pytest.log"
    log.write_text(output)
    assert _why_pytest_failed(status, log) == f"{expected} (its output: {log})"


# --- the single-submission form finds the entry point too -------------------------------------


def test_pytest_server_dir_finds_src_main_py_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "sub"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text(LISTENS)
    result = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "grading/checks",
        "-p",
        "no:cacheprovider",
        "-q",
        "--collect-only",
        f"--server-dir={folder}",
        f"--grade-json={result}",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    entry = json.loads(result.read_text(encoding="utf-8"))["entry"]
    assert entry.startswith('src/main.py (found: the only module with an `if __name__ == "__main__":` guard')
    (folder / "src" / "main.py").unlink()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: --server-dir {folder}: no entry point: no server.py" in done.stderr


# --- entry-point discovery ------------------------------------------------------------------


def folder_with(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


GUARD = 'if __name__ == "__main__":\n    main()\n'
SERVES = (
    "import socketserver\n\ndef main():\n    socketserver.TCPServer(('', 1357), None).serve_forever()\n\n"
)
CONNECTS = "import socket\n\ndef main():\n    socket.create_connection(('localhost', 1357))\n\n"


def test_entry_server_py_comes_first_and_entry_before_it(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {"server.py": SERVES + GUARD, "main.py": SERVES + GUARD})
    assert find_entry(folder).path == "server.py"
    chosen = find_entry(folder, "main.py")
    assert (chosen.path, chosen.how) == ("main.py", "named with --entry")
    missing = find_entry(folder, "app.py")
    assert missing.path is None and missing.problem == "there is no app.py in it (--entry)"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"main.py": SERVES + GUARD, "client.py": CONNECTS + GUARD}, "main.py"),
        ({"Main.py": SERVES + GUARD, "protocol.py": "X = 1\n"}, "Main.py"),
        ({"src/main.py": SERVES + GUARD, "README.md": "hi"}, "src/main.py"),
        # Through the folder's own modules: main.py imports net/listener.py, which binds.
        ({"main.py": "from net.listener import main\n" + GUARD, "net/listener.py": SERVES}, "main.py"),
        ({"src/main.py": "from .tcp import main\n" + GUARD, "src/tcp.py": SERVES}, "src/main.py"),
        (
            {
                "src/app.py": "import handlers\n" + GUARD,
                "src/handlers.py": "import asyncio\nasyncio.start_server(handle, port=1357)\n",
            },
            "src/app.py",
        ),
        ({"src/app.py": "import handlers\n" + GUARD, "src/handlers.py": "s.bind(('', 1))\n"}, "src/app.py"),
        # Several bind: the one named main or server.
        ({"main.py": SERVES + GUARD, "tools.py": SERVES + GUARD}, "main.py"),
        ({"src/server.py": SERVES + GUARD, "admin.py": SERVES + GUARD}, "src/server.py"),
        # What is not an entry point: tests, environments, hidden folders, a guard in a string.
        (
            {"main.py": SERVES + GUARD, "tests/test_x.py": SERVES + GUARD, "test_y.py": SERVES + GUARD},
            "main.py",
        ),
        (
            {"run.py": SERVES + GUARD, "venv/lib/x.py": SERVES + GUARD, ".git/hook.py": SERVES + GUARD},
            "run.py",
        ),
        # A guard inside a function is not the module's.
        ({"main.py": SERVES + "    " + GUARD}, None),
    ],
)
def test_entry_discovery(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    found = find_entry(folder_with(tmp_path, files))
    assert found.path == expected, found.problem
    if expected is not None:
        assert found.how.startswith("found: ")
    else:
        assert found.problem is not None and found.problem.startswith("no entry point: ")


def test_entry_discovery_says_what_is_ambiguous(tmp_path: Path) -> None:
    found = find_entry(folder_with(tmp_path, {"main.py": SERVES + GUARD, "src/main.py": SERVES + GUARD}))
    assert found.path is None
    assert found.problem == (
        'no single entry point: main.py and src/main.py each have an `if __name__ == "__main__":` guard and '
        "bind a socket (name one with --entry)"
    )
    chosen = find_entry(
        folder_with(
            tmp_path / "b", {"a.py": SERVES + GUARD, "b.py": SERVES + GUARD, "main.py": SERVES + GUARD}
        )
    )
    assert chosen.path == "main.py"
    assert chosen.how == (
        'found: named main or server, among the 3 modules with an `if __name__ == "__main__":` guard that '
        "bind a socket (a.py, b.py, main.py)"
    )


# --- the documentation ------------------------------------------------------------------------


def test_the_docs_list_exactly_the_non_strict_points() -> None:
    """docs/grading.md's lists of non-strict points are the checks marked strict=False."""
    marked = set()
    for path in sorted((REPO_ROOT / "grading" / "checks").glob("test_*.py")):
        module = importlib.import_module(f"grading.checks.{path.stem}")
        for name, function in vars(module).items():
            for mark in getattr(function, "pytestmark", []) if name.startswith("test_") else []:
                if mark.name == "spec" and mark.kwargs.get("strict", True) is False:
                    marked.add(str(mark.args[0]))
    assert marked, "some check is non-strict"
    text = (REPO_ROOT / "docs" / "grading.md").read_text(encoding="utf-8")
    bullets = re.findall(r"^- \*\*Non-strict points\*\*.*?(?=^- |^$)", text, flags=re.M | re.S)
    assert len(bullets) == 2, "the batch command's section and the checks' section"
    for bullet in bullets:
        assert set(re.findall(r"`(§[^`]+)`", bullet)) == marked, bullet
