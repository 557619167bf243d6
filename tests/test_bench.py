"""Smoke runs of the benchmark code (bench/): tiny sizes, few clients, no timing asserted.

The figures themselves come from `python -m bench` (README.md "Performance");
here only that every part runs, checks its transfers and writes its results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.cpu import process_cpu_seconds, tree_cpu_seconds
from bench.processes import OurServer, find_sshd, scp_target
from bench.report import MIB, BenchResults, SizeResult, size_label
from bench.workloads import PythonSender, Timing, make_file, percentile, scp_send
from crypto_utils import generate_rsa_key


def test_parse_size() -> None:
    assert bench_run.parse_size("64K") == 64 * 1024
    assert bench_run.parse_size("1m") == MIB
    assert bench_run.parse_size("1G") == 1024**3
    assert bench_run.parse_size("1000") == 1000
    assert size_label(64 * MIB) == "64 MiB"
    assert size_label(1000) == "1000 B"


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([3.0], 0.99) == 3.0


def test_small_run_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Our server with the Python client (and the C++ one when built), a burst, key exchanges."""
    out = tmp_path / "results"
    status = bench_run.main(
        [
            "--sizes",
            "64K",
            "100001",  # not a multiple of 16: the padded tail
            "--runs",
            "2",
            "--clients",
            "5",
            "--client-size",
            "64K",
            "--key-exchanges",
            "5",
            "--no-scp",
            "--no-chart",
            "--out",
            str(out),
            "--tmp",
            str(tmp_path),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| 64 KiB |" in printed and "| 100001 B |" in printed
    assert "5/5 succeeded" in printed
    assert (out / "results.md").read_text() == printed
    results = json.loads((out / "results.json").read_text())
    assert [len(entry["python_seconds"]) for entry in results["sizes"]] == [2, 2]
    assert [len(entry["pre_encrypted_seconds"]) for entry in results["sizes"]] == [2, 2]
    assert all(entry["server_peak_rss_kib"] > 0 for entry in results["sizes"])
    assert len(results["key_exchange_seconds"]) == 5
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("bench-")]  # cleaned up


def test_a_failing_cpp_client_leaves_its_column_empty(tmp_path: Path) -> None:
    """The C++ client is built and changed separately: its failure must not stop the benchmark."""
    broken = tmp_path / "client"
    broken.write_text("#!/bin/sh\necho 'Fatal: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = tmp_path / "results"
    arguments = ["--sizes", "64K", "--runs", "1", "--clients", "0", "--key-exchanges", "0"]
    arguments += ["--no-scp", "--no-chart", "--cpp-client", str(broken)]
    assert bench_run.main([*arguments, "--out", str(out), "--tmp", str(tmp_path)]) == 0
    (entry,) = json.loads((out / "results.json").read_text())["sizes"]
    assert entry["cpp_seconds"] == [] and len(entry["python_seconds"]) == 1


def test_chart(tmp_path: Path) -> None:
    chart = pytest.importorskip("bench.chart", reason="matplotlib (bench/requirements.txt) is missing")
    results = BenchResults(machine={"date": "today", "load average at start": "0"}, runs=1)
    results.sizes.append(SizeResult(MIB, python_seconds=[0.01], pre_encrypted_seconds=[0.005]))
    chart.draw(results, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.skipif(find_sshd(install=False) is None, reason="no sshd (openssh-server)")
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("scp") is None, reason="needs root and scp")
def test_scp_reference(tmp_path: Path) -> None:
    """The private sshd starts on 127.0.0.1, scp copies through it, and it stops."""
    source = tmp_path / "source.bin"
    make_file(source, 100_000)
    with scp_target(tmp_path / "ssh", install=False) as target:
        assert target is not None
        sshd = target.sshd_process
        assert sshd is not None
        timing = scp_send(target, source, tmp_path / "copy.bin")
        assert timing.seconds > 0 and timing.client_cpu > 0
        assert not (tmp_path / "copy.bin").exists()  # checked, then removed
    assert sshd.poll() is not None
    assert not (tmp_path / "ssh").exists()


def test_server_timing_of_a_send(tmp_path: Path) -> None:
    """The server's log line of a 1028, which times the C++ client, is found for its client."""
    with OurServer(tmp_path / "data") as server:
        sender = PythonSender(server, generate_rsa_key())
        source = tmp_path / "file.bin"
        make_file(source, 4096)
        try:
            sender.send(source)
        finally:
            sender.close()
        assert len(server.send_file_ms(sender.client.client_id)) == 1


def test_cpu_seconds_of_a_process_tree() -> None:
    """A child that burns CPU and has a child of its own burning too: both are counted."""
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    script = f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', {burn!r}])\n{burn}"
    script += "print('done', flush=True)\nsys.stdin.read()\nchild.wait()\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "done\n"
        own = process_cpu_seconds(parent.pid)
        assert own >= 0.25
        assert tree_cpu_seconds(parent.pid) >= own + 0.1  # the grandchild's, alive or reaped
    finally:
        parent.communicate("")
    assert process_cpu_seconds(parent.pid) == 0.0  # gone


def test_cpu_per_gib_is_a_median_scaled_to_a_gib() -> None:
    entry = SizeResult(512 * MIB)
    for client, server in ((1.0, 0.5), (3.0, 0.4), (2.0, 0.6)):
        entry.record("python", Timing(1.0, client, server))
    assert entry.cpu_per_gib("python", "client") == pytest.approx(4.0)
    assert entry.cpu_per_gib("python", "server") == pytest.approx(1.0)
    assert entry.cpu_per_gib("python", "total") == pytest.approx(5.2)  # median of the sums
    assert entry.cpu_per_gib("scp", "client") is None
    assert (
        SizeResult(MIB, python_client_cpu=[1.0], python_server_cpu=[1.0]).cpu_per_gib("python", "total")
        is None
    )
