"""Where the GPU's time goes inside the replayed training step, kernel by kernel.

    python -m benchmarks.kernel_profile [--batch 128 1024] [--precision fp32 tf32 bf16]
                                        [--greedy 5000] [--steps 5] [--top 12]
                                        [--trace-dir DIR]

The breakdown in ``benchmarks.gpu_bench`` times parts of the step op by op, with the
host's launch costs in them, so its parts add up to more than the step replayed from
its CUDA graph. This profiles the replayed step itself: PyTorch's profiler (CUPTI,
which reports every kernel the GPU runs for this process, the kernels of a CUDA graph
that CuPy launches included) records ``--steps`` replays, and the trace's device events
are summed per kernel name and per group (cuBLAS products, this library's kernels,
CuPy's generated kernels, copies and fills). Per batch and precision it prints device
microseconds per step by group and for the costliest kernels, and how much of the
step's span the device was busy (the rest is gaps between kernels: dependencies and
launch latency, which a graph shortens but does not remove). ``--greedy IMAGES`` adds
the same for greedy decoding of that many images (16 words, replayed from its graph;
one "step" is one whole decode). Needs CuPy, a GPU and
PyTorch with CUDA (the device machine has them); ``--trace-dir`` keeps each Chrome
trace (open it in Perfetto).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from backend import PRECISIONS, BackendUnavailable, get_backend
from benchmarks.workload import Sizes, library_decode, library_step, synthetic_data
from kernels.cuda_sources import MODULES

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # Chrome-trace "cat" values
# This library's raw CUDA kernels (every one of kernels/cuda_sources.py) and its
# ElementwiseKernels (named caption_*, in kernels/cupy_backend.py).
OWN_KERNELS = (*(kernel for _, kernels in MODULES.values() for kernel in kernels), "caption_")
GROUPS = ("cuBLAS products", "this library's kernels", "CuPy's kernels", "copies and fills",
          "other")


@dataclass(frozen=True)
class DeviceEvent:
    """One kernel, copy or fill on the device: name, start and duration (microseconds)."""

    name: str
    category: str
    start_us: float
    duration_us: float


def device_events(trace: dict) -> list[DeviceEvent]:
    """The device events of a Chrome trace as PyTorch's profiler exports it (a dict
    with "traceEvents"; complete events "ph": "X" with "cat", "name", "ts", "dur" in
    microseconds), in start order."""
    events = [DeviceEvent(e["name"], e["cat"], float(e["ts"]), float(e["dur"]))
              for e in trace.get("traceEvents", [])
              if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES]
    return sorted(events, key=lambda e: e.start_us)


def kernel_group(event: DeviceEvent) -> str:
    """Which of GROUPS an event belongs to, from its category and name."""
    if event.category != "kernel":
        return "copies and fills"
    name = event.name.lower()
    if any(key in event.name for key in OWN_KERNELS):
        return "this library's kernels"
    if any(key in name for key in ("gemm", "gemv", "xmma", "splitk", "cublas", "cutlass",
                                   "nvjet")):  # nvjet: cuBLAS 12's generated Hopper GEMMs
        return "cuBLAS products"
    if "cupy" in name:
        return "CuPy's kernels"
    return "other"


def busy_us(events: Iterable[DeviceEvent]) -> float:
    """Microseconds during which at least one of ``events`` ran (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e.start_us):
        stop = e.start_us + e.duration_us
        if stop > end:
            total += stop - max(e.start_us, end)
            end = stop
    return total


@dataclass(frozen=True)
class StepProfile:
    """Device time of one step, averaged over the profiled steps (microseconds)."""

    steps: int
    span_us: float  # first event's start to last event's end, per step
    busy_us: float  # time with at least one event running, per step
    by_group: dict[str, float]
    by_kernel: dict[str, tuple[float, float]]  # name -> (us per step, launches per step)

    def table(self, top: int) -> str:
        """Markdown tables: the groups, then the ``top`` costliest kernels."""
        total = sum(self.by_group.values()) or 1.0
        lines = [f"device busy {self.busy_us:.1f} us of a {self.span_us:.1f} us span per "
                 f"step ({self.busy_us / (self.span_us or 1.0):.0%}); gaps "
                 f"{self.span_us - self.busy_us:.1f} us",
                 "| group | us per step | share |", "|---|---|---|"]
        lines += [f"| {group} | {us:.1f} | {us / total:.0%} |"
                  for group, us in sorted(self.by_group.items(), key=lambda kv: -kv[1])]
        lines += ["", "| kernel | us per step | launches per step | share |",
                  "|---|---|---|---|"]
        ranked = sorted(self.by_kernel.items(), key=lambda kv: -kv[1][0])
        lines += [f"| {_short(name)} | {us:.1f} | {count:g} | {us / total:.0%} |"
                  for name, (us, count) in ranked[:top]]
        return "\n".join(lines)


def summarise(events: list[DeviceEvent], steps: int) -> StepProfile:
    """Per-step totals of ``events``, the device events of ``steps`` back-to-back steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not events:
        raise ValueError("no device events were recorded: the profiler saw no kernels "
                         "(is CUPTI usable here, and did the work run on the GPU?)")
    by_group: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in events:
        by_group[kernel_group(e)] += e.duration_us / steps
        by_kernel[e.name][0] += e.duration_us / steps
        by_kernel[e.name][1] += 1 / steps
    span = max(e.start_us + e.duration_us for e in events) - events[0].start_us
    return StepProfile(steps, span / steps, busy_us(events) / steps, dict(by_group),
                       {name: (us, count) for name, (us, count) in by_kernel.items()})


def _short(name: str, width: int = 90) -> str:
    """A kernel name cut to ``width`` characters, pipes escaped for a Markdown table."""
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def profile(run: Callable[[], None], synchronize: Callable[[], None], steps: int,
            trace_path: Path | None = None) -> StepProfile:
    """Run ``run`` ``steps`` times under PyTorch's CUDA profiler (after one unprofiled
    call) and summarise the device events; the Chrome trace goes to ``trace_path``."""
    from torch.profiler import ProfilerActivity, supported_activities
    from torch.profiler import profile as torch_profile

    if ProfilerActivity.CUDA not in supported_activities():
        raise RuntimeError("this PyTorch cannot trace the GPU (a CPU-only build?): the "
                           "kernel profile needs a CUDA build of torch")
    run()
    synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
        synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = trace_path or Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(Path(path).read_text())
    return summarise(device_events(trace), steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS,
                        default=list(PRECISIONS))
    parser.add_argument("--greedy", type=int, nargs="*", default=[], metavar="IMAGES",
                        help="also profile greedy decoding of this many images")
    parser.add_argument("--steps", type=int, default=5, help="replays profiled (>= 1)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed (>= 1)")
    parser.add_argument("--trace-dir", type=Path,
                        help="keep each Chrome trace here (trace-N<batch>-<precision>.json)")
    args = parser.parse_args(argv)
    for name in ("steps", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("batch", "greedy"):
        if any(n < 1 for n in getattr(args, name)):
            parser.error(f"--{name} sizes must be >= 1, got {getattr(args, name)}")
    try:
        backend = get_backend("cupy")
    except BackendUnavailable as exc:
        parser.error(f"{exc} (this profiles the GPU step)")
    try:
        import torch.profiler  # noqa: F401
    except ImportError:
        parser.error("PyTorch is needed for its CUPTI profiler: pip install -e "
                     "'.[bench-peers]' (with a CUDA build of torch on a GPU machine)")
    if args.trace_dir:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
    for n in args.batch:
        sizes = Sizes(N=n)
        data = synthetic_data(sizes, num_captions=4096, num_images=1024)
        for precision in args.precision:
            step = library_step(backend, sizes, data, synchronize=False,
                                precision=precision)
            for _ in range(3):  # compile, record the graph, replay once
                step()
            trace = (args.trace_dir / f"trace-N{n}-{precision}.json"
                     if args.trace_dir else None)
            result = profile(step, backend.synchronize, args.steps, trace)
            print(f"\nN={n} {precision}, the step replayed from its CUDA graph, "
                  f"{args.steps} steps profiled:\n{result.table(args.top)}", flush=True)
    for images in args.greedy:
        for precision in args.precision:
            decode = library_decode(backend, Sizes(), 1, images, precision)
            decode()  # record its graph
            trace = (args.trace_dir / f"trace-greedy{images}-{precision}.json"
                     if args.trace_dir else None)
            result = profile(decode, backend.synchronize, args.steps, trace)
            print(f"\ngreedy decoding of {images} images x 16 words, {precision}, replayed "
                  f"from its CUDA graph, {args.steps} decodes profiled (per decode):\n"
                  f"{result.table(args.top)}", flush=True)


if __name__ == "__main__":
    main()
