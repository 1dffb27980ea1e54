"""Side by side: pytest-benchmark runs saved on different machines (a CPU laptop, a GPU
workstation), as one table and one bar chart of captions per second.

    python -m pytest benchmarks --benchmark-save=cpu        # on one machine
    python -m pytest benchmarks --benchmark-save=gpu        # on another
    python -m benchmarks.compare .benchmarks/*/0001_cpu.json gpu/0001_gpu.json \
        --png compare.png

Each benchmark says how many captions one call handles (``extra_info["captions"]``);
captions per second is that over the call's median time. Rows are matched by group and
test name (the backend is in the name), so a backend that ran on one machine only has
an empty cell on the others.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from captioning.atomic import atomic_path


@dataclass(frozen=True)
class Run:
    """One saved pytest-benchmark file."""

    label: str  # the save name and the machine: "gpu (NVIDIA H200)"
    medians: dict[tuple[str, str], float]  # (group, test name) -> median seconds per call
    captions: dict[tuple[str, str], int]  # (group, test name) -> captions per call


def read_run(path: Path) -> Run:
    """The benchmarks of one ``--benchmark-save``/``--benchmark-json`` file. Raises
    ValueError naming the file when it is not one."""
    try:
        saved = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); expected a file pytest-benchmark "
                         "saved (--benchmark-save or --benchmark-json)") from exc
    benchmarks = saved.get("benchmarks") if isinstance(saved, dict) else None
    if not isinstance(benchmarks, list) or not benchmarks:
        raise ValueError(f"{path}: holds no 'benchmarks' list; expected a file "
                         "pytest-benchmark saved (--benchmark-save or --benchmark-json)")
    medians, captions = {}, {}
    for bench in benchmarks:
        try:
            key = (str(bench.get("group") or "ungrouped"), str(bench["name"]))
            medians[key] = float(bench["stats"]["median"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a benchmark without a name or a median time "
                             f"({type(exc).__name__}: {exc})") from exc
        count = (bench.get("extra_info") or {}).get("captions")
        if isinstance(count, int) and count > 0:
            captions[key] = count
    machine = saved.get("machine_info") or {}
    where = machine.get("gpu") or (machine.get("cpu") or {}).get("brand_raw") or \
        machine.get("node") or "unknown machine"
    name = re.sub(r"^\d+_", "", path.stem)  # pytest-benchmark's "0001_" counter
    return Run(f"{name} ({where})", medians, captions)


def rate(run: Run, key: tuple[str, str]) -> float | None:
    """Captions per second of one benchmark in one run, or None where it has none."""
    if key not in run.medians or key not in run.captions:
        return None
    return run.captions[key] / run.medians[key]


def keys_in_order(runs: list[Run]) -> list[tuple[str, str]]:
    """Every (group, test) of any run, grouped, in the order first seen."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run.medians))
    groups = list(dict.fromkeys(group for group, _ in seen))
    return [key for group in groups for key in seen if key[0] == group]


def table(runs: list[Run]) -> str:
    """A Markdown table: per benchmark, each run's median ms and captions per second."""
    head = "| group | benchmark | " + " | ".join(
        f"{r.label} ms | {r.label} captions/s" for r in runs) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(runs))]
    for key in keys_in_order(runs):
        cells = []
        for run in runs:
            seconds, per_second = run.medians.get(key), rate(run, key)
            cells.append("" if seconds is None else f"{seconds * 1e3:.3f}")
            cells.append("" if per_second is None else f"{per_second:,.0f}")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(runs: list[Run], path: Path) -> int:
    """One panel per group, one bar per benchmark and run (captions per second, log
    scale), written to ``path`` (PNG) atomically. Returns the number of bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys_in_order(runs) if any(rate(r, k) for r in runs)]
    groups = list(dict.fromkeys(group for group, _ in keys))
    if not groups:
        raise ValueError("no benchmark records how many captions it handles "
                         "(extra_info['captions']): nothing to chart")
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = 0
    for ax, group in zip(axes.flat, groups):
        tests = [name for g, name in keys if g == group]
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            heights = [rate(run, (group, t)) or 0.0 for t in tests]
            ax.bar([x + i * width for x in range(len(tests))], heights, width,
                   label=run.label, color=colours[i % len(colours)])
            bars += sum(h > 0 for h in heights)
        ax.set_title(group)
        ax.set_yscale("log")
        ax.set_ylabel("captions / s")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tests))])
        ax.set_xticklabels([re.sub(r"^test_", "", t) for t in tests], rotation=30,
                           ha="right", fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, metavar="SAVED.json",
                        help="files written by pytest --benchmark-save (under .benchmarks/) "
                        "or --benchmark-json")
    parser.add_argument("--png", type=Path, default=Path("benchmark-compare.png"),
                        help="the bar chart to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        runs = [read_run(path) for path in args.files]
        print(table(runs))
        bars = bar_chart(runs, args.png)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nbar chart ({bars} bars): {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
