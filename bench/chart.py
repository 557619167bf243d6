"""The throughput chart (bench/results/throughput.png): ours against scp, by file size.

Needs matplotlib (bench/requirements.txt); `bench.run` imports this module
only when it is installed and a chart is wanted.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from bench.report import BenchResults, size_label


def draw(results: BenchResults, path: Path) -> None:
    """Grouped bars: one group per file size, one bar per tool, its median MB/s written on it."""
    series = [
        ("ours, Python client", [entry.mb_per_s(entry.python_seconds) for entry in results.sizes]),
        ("ours, C++ client", [entry.mb_per_s(entry.cpp_seconds) for entry in results.sizes]),
        ("ours, server alone", [entry.mb_per_s(entry.pre_encrypted_seconds) for entry in results.sizes]),
        ("scp (aes128-gcm)", [entry.mb_per_s(entry.scp_seconds) for entry in results.sizes]),
    ]
    series = [(label, values) for label, values in series if any(v is not None for v in values)]
    figure, axes = plt.subplots(figsize=(10, 5), dpi=100)
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(results.sizes))]
        heights = [value or 0.0 for value in values]
        color = "dimgray" if label.startswith("scp") else None  # the reference stands apart
        bars = axes.bar(positions, heights, width, label=label, color=color)
        axes.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=8)
    axes.set_xticks(range(len(results.sizes)), [size_label(entry.size) for entry in results.sizes])
    axes.set_xlabel("file size")
    axes.set_ylabel("throughput (MB/s, median)")
    axes.set_title(f"Encrypted transfer over loopback, {results.machine['date']}")
    axes.legend(loc="upper left")
    axes.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
