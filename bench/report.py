"""The benchmark's results: medians, the table, and the files under bench/results/.

MB is 10^6 bytes (as scp and the issue count); MiB is 2^20. Each throughput is
the file size over the median time of its runs; each ratio ours/scp divides
two medians measured in the same benchmark run, runs interleaved.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

from bench.workloads import ConcurrencyResult, percentile

MB = 1_000_000
MIB = 1024 * 1024


@dataclass
class SizeResult:
    size: int
    python_seconds: list[float] = field(default_factory=list)
    pre_encrypted_seconds: list[float] = field(default_factory=list)
    cpp_seconds: list[float] = field(default_factory=list)
    scp_seconds: list[float] = field(default_factory=list)
    server_start_rss_kib: int = 0  # VmHWM of the fresh server before any transfer
    server_peak_rss_kib: int = 0  # VmHWM after all the transfers of this size

    def mb_per_s(self, seconds: list[float]) -> float | None:
        return self.size / statistics.median(seconds) / MB if seconds else None


@dataclass
class BenchResults:
    machine: dict[str, str]
    runs: int
    sizes: list[SizeResult] = field(default_factory=list)
    concurrency: ConcurrencyResult | None = None
    concurrency_peak_rss_kib: int = 0
    key_exchange_seconds: list[float] = field(default_factory=list)


def size_label(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "unavailable"
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.stdout or result.stderr else ""


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, str]:
    cpu = "unknown"
    meminfo = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, StopIteration, IndexError):
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": meminfo,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "pycryptodome": _package_version("pycryptodome"),
        # The client's CBC encryption: its wheels bring their own OpenSSL, not the system's.
        "cryptography": f"{_package_version('cryptography')} ({openssl_backend.openssl_version_text()})",
        "openssh": _command_output(["ssh", "-V"]),
        # Other work on the machine skews absolute figures (less so the ratios): say how much.
        "load average at start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def _cell(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def _ratio(ours: float | None, reference: float | None) -> float | None:
    return ours / reference if ours is not None and reference else None


def table(results: BenchResults) -> str:
    """The results as Markdown: the machine, the per-size table, concurrency and key exchange."""
    lines = [
        f"Measured {results.machine['date']} on {results.machine['cpu']}, {results.machine['memory']}, "
        f"{results.machine['os']}; Python {results.machine['python']}, pycryptodome "
        f"{results.machine['pycryptodome']}, cryptography {results.machine['cryptography']}, "
        f"{results.machine['openssh']}. "
        f"Load average (1, 5, 15 min) at start: {results.machine['load average at start']}. "
        f"Median of {results.runs} runs per figure; MB = 10^6 bytes.",
        "",
        "Throughput (MB/s) and the server's peak RSS:",
        "",
        "| file | ours, Python client | ours, C++ client | ours, server alone | scp aes128-gcm "
        "| server peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ratios = [
        "",
        "Ratios ours / scp, measured in the same run:",
        "",
        "| file | Python client / scp | C++ client / scp | server alone / scp |",
        "|---|---:|---:|---:|",
    ]
    for entry in results.sizes:
        label = size_label(entry.size)
        scp = entry.mb_per_s(entry.scp_seconds)
        ours = [
            entry.mb_per_s(seconds)
            for seconds in (entry.python_seconds, entry.cpp_seconds, entry.pre_encrypted_seconds)
        ]
        cells = [_cell(value, ".1f") for value in (*ours, scp)]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry.server_peak_rss_kib / 1024:.1f} |")
        cells = [_cell(_ratio(value, scp), ".2f") for value in ours]
        ratios.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ratios
    lines += [
        "",
        "Server alone: the content encrypted beforehand (untimed) and sent with sendfile(), so the "
        "client's CBC encryption is left out.",
    ]
    if results.sizes:
        start = max(entry.server_start_rss_kib for entry in results.sizes) / 1024
        lines += ["", f"Server peak RSS right after start, before any transfer: {start:.1f} MiB."]
    if results.concurrency is not None:
        burst = results.concurrency
        lines += [
            "",
            f"{burst.clients} concurrent clients sending {size_label(burst.file_size)} each: "
            f"{burst.succeeded}/{burst.clients} succeeded; aggregate "
            f"{burst.aggregate_bytes_per_second / MB:.1f} MB/s ({burst.send_seconds:.2f} s from all "
            f"ready to the last 2103; {burst.total_seconds:.2f} s with connect, register and key "
            f"exchange); server peak RSS {results.concurrency_peak_rss_kib / 1024:.1f} MiB.",
        ]
        lines += [f"- error: {error}" for error in burst.errors[:10]]
    if results.key_exchange_seconds:
        timings = results.key_exchange_seconds
        lines += [
            "",
            f"Register + key exchange (connect, 1025 -> 2100, 1026 -> 2102), {len(timings)} clients one "
            f"after another on an idle server: p50 {percentile(timings, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(timings, 0.99) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms.",
        ]
    return "\n".join(lines) + "\n"


def write_results(results: BenchResults, folder: Path) -> Path:
    """results.md (the table) and results.json (every run's figures); the path of the table."""
    folder.mkdir(parents=True, exist_ok=True)
    table_path = folder / "results.md"
    table_path.write_text(table(results))
    (folder / "results.json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    return table_path
