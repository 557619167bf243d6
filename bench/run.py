"""The benchmark's command line: `python -m bench [--quick] [options]`.

In one run, for each file size: a fresh server, then runs interleaved (the
Python client, content encrypted beforehand and sent with sendfile() (what the
server alone takes), the C++ client when built, scp; the order rotates from
run to run), then the server's peak RSS. Then 100 clients at once, and 200
register + key exchanges one after another, each on a fresh server. Everything talks to
127.0.0.1 only; test files live in a temporary folder under /tmp, removed at
the end.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from bench.processes import BenchError, OurServer, ScpTarget, scp_target
from bench.report import MIB, BenchResults, SizeResult, describe_machine, size_label, table, write_results
from bench.workloads import (
    CppSender,
    PreEncryptedSender,
    PythonSender,
    Timing,
    concurrent_clients,
    find_cpp_client,
    key_exchange_seconds,
    make_file,
    remove_tree,
    scp_send,
)
from crypto_utils import generate_rsa_key

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = ["1M", "64M", "1G"]
QUICK_SIZES = ["1M", "64M"]
DEFAULT_RUNS = 5
QUICK_RUNS = 3
WARM_UP_LIMIT = 1024 * MIB  # sizes up to this get one untimed transfer per tool first
# Tools whose failure leaves their column empty instead of stopping the benchmark: the C++
# client is built and changed separately.
OPTIONAL_TOOLS = frozenset({"cpp"})
SIZE_PATTERN = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`64K`, `1M`, `1G` (powers of 1024) or a number of bytes."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 64K, 1M, 1G)")
    exponent = " KMG".index(match.group(2).upper() or " ")
    size: int = int(match.group(1)) * 1024**exponent
    if size <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, memory and latency of the server, side by side with OpenSSH scp.",
    )
    parser.add_argument("--quick", action="store_true", help="sizes 1M 64M, 3 runs (seconds, not minutes)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, help="file sizes (default: 1M 64M 1G)")
    parser.add_argument("--runs", type=int, help=f"timed runs per size and tool (default: {DEFAULT_RUNS})")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (default: 100)")
    parser.add_argument("--client-size", type=parse_size, default=MIB, help="file per concurrent client")
    parser.add_argument(
        "--key-exchanges", type=int, default=200, help="register + key exchanges timed (default: 200)"
    )
    parser.add_argument("--no-scp", action="store_true", help="leave out the scp reference")
    parser.add_argument("--no-cpp", action="store_true", help="leave out the C++ client even if built")
    parser.add_argument(
        "--cpp-client", type=Path, help="the C++ client program (default: build/client/client if built)"
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install openssh-server")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="results folder (default: bench/results)"
    )
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where test files go")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [parse_size(size) for size in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else DEFAULT_RUNS
    if args.runs < 1 or args.clients < 0 or args.key_exchanges < 0:
        parser.error("--runs must be positive; --clients and --key-exchanges not negative")
    return args


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _attempt(tool: str, result: SizeResult, send: Callable[[], Timing], failed: set[str]) -> Timing | None:
    """One timed transfer; an optional tool that fails is left out of this size, not fatal."""
    if tool in failed:
        return None
    try:
        return send()
    except BenchError as err:
        if tool not in OPTIONAL_TOOLS:
            raise
        _say(f"  {tool} failed and is left out: {err}")
        failed.add(tool)
        result.clear(tool)
        return None


def _bench_size(
    size: int,
    args: argparse.Namespace,
    work: Path,
    scp: ScpTarget | None,
    cpp_binary: Path | None,
) -> SizeResult:
    """Every tool on one file size, runs interleaved, on a fresh server."""
    label = size_label(size).replace(" ", "")
    source = work / f"file-{label}.bin"
    make_file(source, size)
    result = SizeResult(size)
    try:
        with OurServer(work / f"server-{label}") as server:
            result.server_start_rss_kib = server.peak_rss_kib()
            rsa_key = generate_rsa_key()
            python = PythonSender(server, rsa_key)
            tools: list[tuple[str, Callable[[], Timing]]] = [("python", lambda: python.send(source))]
            pre = PreEncryptedSender(server, rsa_key, source, work / f"file-{label}.enc")
            tools.append(("pre_encrypted", pre.send))
            if cpp_binary is not None:
                cpp = CppSender(cpp_binary, work / f"cpp-{label}", server)
                tools.append(("cpp", lambda: cpp.send(source)))
            if scp is not None:
                destination = work / "scp-copy.bin"
                tools.append(("scp", lambda: scp_send(scp, source, destination)))
            failed: set[str] = set()
            try:
                if size <= WARM_UP_LIMIT:
                    for tool, send in tools:
                        _attempt(tool, result, send, failed)
                for run in range(args.runs):
                    shift = run % len(tools)
                    for tool, send in tools[shift:] + tools[:shift]:
                        os.sync()  # start each run with no dirty pages of the previous one
                        timing = _attempt(tool, result, send, failed)
                        if timing is not None:
                            result.record(tool, timing)
                            _say(
                                f"  {size_label(size)} run {run + 1} {tool}: "
                                f"{size / timing.seconds / 1e6:.1f} MB/s, CPU client "
                                f"{timing.client_cpu:.2f} s + server {timing.server_cpu:.2f} s"
                            )
            finally:
                python.close()
            result.server_peak_rss_kib = server.peak_rss_kib()
    finally:
        source.unlink(missing_ok=True)
        (work / f"file-{label}.enc").unlink(missing_ok=True)
    return result


def run(args: argparse.Namespace) -> BenchResults:
    results = BenchResults(machine=describe_machine(), runs=args.runs)
    cpp_binary = None if args.no_cpp else args.cpp_client or find_cpp_client()
    if cpp_binary is None and not args.no_cpp:
        _say("C++ client not built (build/client/client): its column is left out")
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.tmp))
    try:
        scp_context = nullcontext(None) if args.no_scp else scp_target(work / "ssh", not args.no_install)
        with scp_context as scp:
            for size in args.sizes:
                _say(f"{size_label(size)}:")
                results.sizes.append(_bench_size(size, args, work, scp, cpp_binary))
        rsa_key = generate_rsa_key()
        if args.clients:
            _say(f"{args.clients} concurrent clients, {size_label(args.client_size)} each")
            source = work / "concurrent.bin"
            make_file(source, args.client_size)
            # All the clients come from 127.0.0.1: the server's limit per address must let them in.
            limits = ["--max-connections", str(max(200, args.clients))]
            limits += ["--max-connections-per-address", str(args.clients)]
            with OurServer(work / "server-concurrent", options=tuple(limits)) as server:
                results.concurrency = concurrent_clients(server, args.clients, source, rsa_key)
                results.concurrency_peak_rss_kib = server.peak_rss_kib()
        if args.key_exchanges:
            _say(f"{args.key_exchanges} register + key exchanges")
            with OurServer(work / "server-keys") as server:
                time.sleep(0.5)  # idle: let the start-up settle
                results.key_exchange_seconds = key_exchange_seconds(server, args.key_exchanges, rsa_key)
    finally:
        remove_tree(work)
    # Other work on the machine skews the figures: the load at the end says whether it came meanwhile.
    results.machine["load average at end"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(table(results), end="")
    table_path = write_results(results, args.out)
    written = [table_path, table_path.with_suffix(".json")]
    if not args.no_chart:
        if importlib.util.find_spec("matplotlib") is None:
            _say("no chart: matplotlib is missing (pip install -r bench/requirements.txt)")
        else:
            chart_path = args.out / "throughput.png"
            importlib.import_module("bench.chart").draw(results, chart_path)
            written.append(chart_path)
    _say("written: " + ", ".join(str(path) for path in written))
    burst = results.concurrency
    return 1 if burst is not None and burst.succeeded != burst.clients else 0
