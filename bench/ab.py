"""A/B runs: two source trees of this project, measured in one run, alternately.

    python -m bench.ab A_DIR B_DIR [--side server|client|cpp] [--size 1G] [--runs 6]

Each tree is a copy of the project (`git archive COMMIT | tar -x -C DIR`).
- `--side server`: a server from each tree; each run sends it the content
  encrypted beforehand with sendfile() (the "server alone" of `python -m
  bench`); the server's CPU seconds and the throughput.
- `--side client`: one server (this tree's); each run is the Python client
  of one tree, in a process of its own, sending the file; the client's and
  the server's CPU seconds and the throughput.
- `--side cpp`: one server (this tree's); each tree's C++ client is built
  first (cmake, Release, in DIR/build/client), registers in an untimed run,
  then each run is one transfer of the file by it; the whole client process's
  CPU seconds, the server's, and the server's timing of the 1028 (as `python
  -m bench` times the C++ client).

The runs alternate A, B, B, A, A, B, ... so that a drift in the machine's load
weighs on both alike; each run starts after `sync`. Prints every run and the
medians; B's median CPU per GiB against A's decides (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.processes import OurServer
from bench.report import GIB, size_label
from bench.run import parse_size
from bench.workloads import CppSender, PreEncryptedSender, Timing, make_file, remove_tree
from crypto_utils import generate_rsa_key

# The client side's run, in a process whose imports come from the tree under test. It
# registers, then times one 1028 as bench.workloads.PythonSender does, and prints the timing.
CLIENT_RUN = """
import json, os, resource, sys, time
tree, host, port, server_pid, path = sys.argv[1:6]
sys.path.insert(0, tree)
from client import FileTransferClient
from crypto_utils import generate_rsa_key

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def server_cpu():
    fields = open(f"/proc/{server_pid}/stat").read().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

with FileTransferClient(host, int(port), timeout=600) as client:
    name = f"ab-{os.getpid()}-{time.time_ns()}"
    client.register(name)
    client.send_public_key(name, generate_rsa_key())
    server_start, client_start, started = server_cpu(), cpu(), time.perf_counter()
    received, checksum = client.send_file(path, "ab.bin")
    elapsed = time.perf_counter() - started
    timing = [elapsed, cpu() - client_start, server_cpu() - server_start]
    assert received.cksum == checksum, "checksum mismatch"
    client.crc_ok("ab.bin")
print(json.dumps(timing))
"""


def _order(runs: int) -> list[int]:
    """0 (A) and 1 (B) in the order A B B A A B B A ...: each leads as often as the other."""
    return [(run + run // 2) % 2 for run in range(2 * runs)]


def _client_run(tree: Path, server: OurServer, path: Path) -> Timing:
    host, port = server.address
    command = [sys.executable, "-c", CLIENT_RUN, str(tree), host, str(port), str(server.pid), str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900)
    seconds, client_cpu, server_cpu = json.loads(result.stdout.splitlines()[-1])
    return Timing(seconds, client_cpu, server_cpu)


BUILD_TIMEOUT = 900  # seconds for one configure or build of a tree's C++ client


def build_cpp_client(tree: Path) -> Path:
    """Configures and builds `tree`'s C++ client (Release, in tree/build/client); its program."""
    build_dir = tree / "build" / "client"
    commands = [
        ["cmake", "-S", str(tree / "client"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2), "--target", "client"],
    ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return build_dir / "client"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, metavar="DIR", help="tree A, tree B")
    parser.add_argument("--side", choices=["server", "client", "cpp"], default="server")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--runs", type=int, default=6, help="runs of each tree (default 6)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.trees]
    work = Path(tempfile.mkdtemp(prefix="bench-ab-", dir=args.tmp))
    timings: list[list[Timing]] = [[], []]
    binaries = [build_cpp_client(tree) for tree in trees] if args.side == "cpp" else []
    try:
        source = work / "file.bin"
        make_file(source, args.size)
        servers = []
        senders: list[PreEncryptedSender] = []
        cpp_senders: list[CppSender] = []
        for index, tree in enumerate(trees):
            if args.side in ("client", "cpp") and index == 1:
                break  # one server for both clients
            server_py = tree / "server.py" if args.side == "server" else OurServer.server_py
            server = OurServer(work / f"server-{index}", server_py=server_py).__enter__()
            servers.append(server)
            if args.side == "server":
                rsa_key = generate_rsa_key()
                senders.append(PreEncryptedSender(server, rsa_key, source, work / f"file-{index}.enc"))
        for index, binary in enumerate(binaries):
            cpp_senders.append(CppSender(binary, work / f"cpp-{index}", servers[0]))
            cpp_senders[-1].send(source)  # untimed: registers, and warms the file
        try:
            for index in _order(args.runs):
                os.sync()
                if args.side == "server":
                    timing = senders[index].send()
                elif args.side == "cpp":
                    timing = cpp_senders[index].send(source)
                else:
                    timing = _client_run(trees[index], servers[0], source)
                timings[index].append(timing)
                scale = GIB / args.size
                print(
                    f"{'AB'[index]} {args.size / timing.seconds / 1e6:7.1f} MB/s  CPU s/GiB: client "
                    f"{timing.client_cpu * scale:.2f} server {timing.server_cpu * scale:.2f}",
                    flush=True,
                )
        finally:
            for server in servers:
                server.__exit__(None, None, None)
    finally:
        remove_tree(work)
    print(f"{size_label(args.size)}, {args.runs} runs each, medians ({args.side} side):")
    for index, runs in enumerate(timings):
        speed = args.size / statistics.median(t.seconds for t in runs) / 1e6
        client = statistics.median(t.client_cpu for t in runs) * GIB / args.size
        server = statistics.median(t.server_cpu for t in runs) * GIB / args.size
        tree = trees[index]
        print(f"  {'AB'[index]} {tree}: {speed:.1f} MB/s, CPU s/GiB client {client:.2f} server {server:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
