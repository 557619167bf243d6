"""Where a large transfer's time goes: py-spy samples the server and the Python client.

    python -m bench.profile [--size 1G] [--transfers 2] [--pre-encrypted] [--out bench/results]

One server, one registered client in this process; py-spy (bench/requirements.txt;
root, or ptrace allowed) records both processes, with native frames, while the
client sends the file. Prints, for each process, the share of samples by the
innermost Python function and by the innermost frame (a C function with
`--native`), idle time included: a thread blocked in recv or sendall shows as
the socket call it is blocked in. The raw samples go to profile-*.txt under --out.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import OurServer
from bench.report import size_label
from bench.run import RESULTS_DIR, parse_size
from bench.workloads import PreEncryptedSender, PythonSender, make_file
from crypto_utils import generate_rsa_key

SAMPLE_RATE = 100  # samples per second; py-spy pauses the process for each (with --native)
TOP = 12  # functions listed per process


def _record(pid: int, output: Path) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--idle"]
    command += ["--native", "--threads", "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_name(frame: str) -> str:
    """`readinto (socket.py:706)` -> `readinto (socket.py)`: lines spread one function over rows."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def summarise(raw: Path, title: str) -> list[str]:
    """The TOP innermost frames and innermost Python functions by share of samples."""
    native: collections.Counter[str] = collections.Counter()
    python: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first is the thread
        if not frames:
            continue
        total += count
        native[_frame_name(frames[-1])] += count
        in_python = [frame for frame in frames if ".py:" in frame]
        python[_frame_name(in_python[-1]) if in_python else _frame_name(frames[-1])] += count
    lines = [f"{title}: {total} samples (all threads, idle included)"]
    for heading, counter in (("innermost frame", native), ("innermost Python function", python)):
        lines.append(f"  by {heading}:")
        lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(TOP)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="file size (default 1G)")
    parser.add_argument("--transfers", type=int, default=2, help="transfers recorded (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the raw samples")
    parser.add_argument(
        "--pre-encrypted",
        action="store_true",
        help="send content encrypted beforehand with sendfile(): the server's side alone",
    )
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is missing: pip install -r bench/requirements.txt", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        source = work / "file.bin"
        make_file(source, args.size)
        with OurServer(work / "server") as server:
            rsa_key = generate_rsa_key()
            sender = PythonSender(server, rsa_key)
            pre = None
            if args.pre_encrypted:
                pre = PreEncryptedSender(server, rsa_key, source, work / "file.enc")
            outputs = {"server": args.out / "profile-server.txt", "client": args.out / "profile-client.txt"}
            recorders = [_record(server.pid, outputs["server"]), _record(os.getpid(), outputs["client"])]
            time.sleep(1.0)  # py-spy attaches
            started = time.perf_counter()
            for _ in range(args.transfers):
                if pre is not None:
                    pre.send()
                else:
                    sender.send(source)
            elapsed = time.perf_counter() - started
            sender.close()
            for recorder in recorders:
                recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
                _, error = recorder.communicate(timeout=60)
                if recorder.returncode:
                    print(f"py-spy: {error.decode('utf-8', 'replace')}", file=sys.stderr)
        speed = args.transfers * args.size / elapsed / 1e6
        print(f"{args.transfers} x {size_label(args.size)}: {speed:.1f} MB/s under the profiler")
        for name, raw in outputs.items():
            print("\n".join(summarise(raw, name)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
