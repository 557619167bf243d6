"""The benchmark's results: medians, the table, and the files under bench/results/.

MB is 10^6 bytes (as scp and the issue count); MiB is 2^20. Each throughput is
the file size over the median time of its runs; each ratio ours/scp divides
two medians measured in the same benchmark run, runs interleaved. CPU seconds
per GiB are the median of the runs' CPU seconds (user + system), scaled to
2^30 bytes, for the client's side, the server's, and both together.
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

from bench.cpu import MIN_CPU_SIZE
from bench.workloads import ConcurrencyResult, Timing, percentile

MB = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
# Targets of issue 13 at 1 GiB, ours / scp in the same run: printed beside the ratios.
TARGETS = {"python": 1.0, "pre_encrypted": 1.3}


# The tools of a size's runs, in the order of the tables: (key, label).
TOOLS = (
    ("python", "ours, Python client"),
    ("cpp", "ours, C++ client"),
    ("pre_encrypted", "ours, server alone"),
    ("scp", "scp aes128-gcm"),
)


@dataclass
class SizeResult:
    """Every run of every tool at one file size: seconds, and CPU seconds on each side."""

    size: int
    python_seconds: list[float] = field(default_factory=list)
    pre_encrypted_seconds: list[float] = field(default_factory=list)
    cpp_seconds: list[float] = field(default_factory=list)
    scp_seconds: list[float] = field(default_factory=list)
    # CPU seconds (user + system) of each run, the client's side and the server's (bench/cpu.py).
    python_client_cpu: list[float] = field(default_factory=list)
    python_server_cpu: list[float] = field(default_factory=list)
    pre_encrypted_client_cpu: list[float] = field(default_factory=list)
    pre_encrypted_server_cpu: list[float] = field(default_factory=list)
    cpp_client_cpu: list[float] = field(default_factory=list)
    cpp_server_cpu: list[float] = field(default_factory=list)
    scp_client_cpu: list[float] = field(default_factory=list)
    scp_server_cpu: list[float] = field(default_factory=list)
    server_start_rss_kib: int = 0  # VmHWM of the fresh server before any transfer
    server_peak_rss_kib: int = 0  # VmHWM after all the transfers of this size

    def seconds(self, tool: str) -> list[float]:
        runs: list[float] = getattr(self, f"{tool}_seconds")
        return runs

    def record(self, tool: str, timing: Timing) -> None:
        self.seconds(tool).append(timing.seconds)
        getattr(self, f"{tool}_client_cpu").append(timing.client_cpu)
        getattr(self, f"{tool}_server_cpu").append(timing.server_cpu)

    def clear(self, tool: str) -> None:
        for suffix in ("seconds", "client_cpu", "server_cpu"):
            getattr(self, f"{tool}_{suffix}").clear()

    def mb_per_s(self, seconds: list[float]) -> float | None:
        return self.size / statistics.median(seconds) / MB if seconds else None

    def cpu_per_gib(self, tool: str, side: str) -> float | None:
        """Median CPU seconds per GiB of `tool`'s runs on `side` ("client", "server", "total")."""
        if self.size < MIN_CPU_SIZE:
            return None  # a few clock ticks: noise
        client: list[float] = getattr(self, f"{tool}_client_cpu")
        server: list[float] = getattr(self, f"{tool}_server_cpu")
        total = [a + b for a, b in zip(client, server, strict=True)]
        runs = {"client": client, "server": server, "total": total}[side]
        return statistics.median(runs) * GIB / self.size if runs else None


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


def _headline(results: BenchResults) -> list[str]:
    """The largest size's ratios to scp against the targets, and the CPU per GiB: the answer first."""
    if not results.sizes:
        return []
    entry = max(results.sizes, key=lambda result: result.size)
    scp = entry.mb_per_s(entry.scp_seconds)
    parts = []
    for tool, label in TOOLS[:3]:
        speed = entry.mb_per_s(entry.seconds(tool))
        if speed is None:
            continue
        ratio = _ratio(speed, scp)
        text = f"{label} {speed:.0f} MB/s"
        if ratio is not None:
            target = TARGETS.get(tool)
            goal = f", target {target:.1f}x" if target is not None and entry.size >= GIB else ""
            text += f" = {ratio:.2f}x scp{goal}"
        server_cpu = entry.cpu_per_gib(tool, "server")
        client_cpu = entry.cpu_per_gib(tool, "client")
        if server_cpu is not None and client_cpu is not None:
            text += f" (CPU s/GiB: server {server_cpu:.2f}, client {client_cpu:.2f})"
        parts.append(text)
    if scp is not None:
        text = f"scp {scp:.0f} MB/s"
        server_cpu, client_cpu = entry.cpu_per_gib("scp", "server"), entry.cpu_per_gib("scp", "client")
        if server_cpu is not None and client_cpu is not None:
            text += f" (CPU s/GiB: sshd {server_cpu:.2f}, ssh+scp {client_cpu:.2f})"
        parts.append(text)
    return [f"**At {size_label(entry.size)}:** " + "; ".join(parts) + ".", ""]


def table(results: BenchResults) -> str:
    """The results as Markdown: the machine, the per-size table, concurrency and key exchange."""
    lines = [
        f"Measured {results.machine['date']} on {results.machine['cpu']}, {results.machine['memory']}, "
        f"{results.machine['os']}; Python {results.machine['python']}, pycryptodome "
        f"{results.machine['pycryptodome']}, cryptography {results.machine['cryptography']}, "
        f"{results.machine['openssh']}. "
        f"Load average (1, 5, 15 min) at start: {results.machine['load average at start']}"
        + (
            f", at the end: {results.machine['load average at end']}"
            if "load average at end" in results.machine
            else ""
        )
        + f". Median of {results.runs} runs per figure; MB = 10^6 bytes.",
        "",
        *_headline(results),
        "Throughput (MB/s), its ratio to scp in the same run, and CPU seconds per GiB "
        "(user + system, median of the runs) of the client's side, the server's side and both:",
        "",
        "| file | tool | MB/s | / scp | client CPU s/GiB | server CPU s/GiB | total CPU s/GiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for entry in results.sizes:
        label = size_label(entry.size)
        scp = entry.mb_per_s(entry.scp_seconds)
        for tool, name in TOOLS:
            speed = entry.mb_per_s(entry.seconds(tool))
            if speed is None:
                continue
            ratio = _cell(_ratio(speed, scp), ".2f") if tool != "scp" else "1"
            cpu = [_cell(entry.cpu_per_gib(tool, side), ".2f") for side in ("client", "server", "total")]
            lines.append(f"| {label} | {name} | {speed:.1f} | {ratio} | " + " | ".join(cpu) + " |")
    lines += [
        "",
        "Server alone: the content encrypted beforehand (untimed) and sent with sendfile(), so the "
        "client's CBC encryption is left out. For scp the client's side is scp, its ssh and the "
        "ssh master connection (which encrypts), the server's side sshd with its session and SFTP "
        f"processes. CPU is n/a below {size_label(MIN_CPU_SIZE)}: a few 10 ms clock ticks of /proc.",
    ]
    if results.sizes:
        lines += ["", "Server peak RSS (VmHWM, MiB) after all the transfers of each size:", ""]
        lines += [
            f"- {size_label(entry.size)}: {entry.server_peak_rss_kib / 1024:.1f}" for entry in results.sizes
        ]
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
