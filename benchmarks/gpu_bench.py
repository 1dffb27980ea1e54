"""GPU figures for the CuPy backend beside PyTorch (cuDNN) on the same GPU.

python -m benchmarks.gpu_bench [--epoch-batch 1024] [--skip-epoch] [--skip-torch]
                               [--parts steps host breakdown decoding epoch]

Prints, last, the device check's table: per batch size (128, 1024) and precision (fp32,
tf32, bf16), one training step's time for the CuPy backend (replayed from its CUDA
graph) and for PyTorch's nn.LSTM model (FP32; TF32 allowed; autocast bfloat16), their
ratio, the model's matrix FLOPs per step (as PyTorch and the exercise multiply it, at
every position; the library's step multiplies fewer, each word's input projection once
per vocabulary word), the achieved TFLOP/s on that count and the share of the detected
card's dense peak for that precision; then decoding, and one full epoch over 400,135
synthetic captions with 82,783 x 4096 float32 features in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backend import PRECISIONS
from benchmarks.workload import (
    DECODE_IMAGES,
    Sizes,
    decode_model,
    library_decode,
    library_step,
    median_time,
    step_breakdown,
    synthetic_data,
)

PARTS = ("steps", "host", "breakdown", "decoding", "epoch")
# Dense (no sparsity) peak TFLOP/s per precision, from NVIDIA's datasheets: "NVIDIA H100
# Tensor Core GPU" (SXM5: FP32 67, TF32 989 and BF16 1,979 with sparsity, so 495 and 990
# dense; PCIe: 51, 756 -> 378, 1,513 -> 756) and "NVIDIA H200 Tensor Core GPU" (SXM: the
# H100 SXM's rates). Matched on the device name in this order; other cards get no share.
PEAK_TFLOPS = (
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("H200", {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0}),
    ("H100", {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0}),
)


def card_peaks(device_name: str) -> dict[str, float] | None:
    """The dense peak TFLOP/s per precision of the card called ``device_name``, or None
    for a card not in PEAK_TFLOPS."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return peaks
    return None


def full_epoch(batch_size: int, precision: str) -> tuple[float, int, float]:
    """Seconds for one epoch over 400,135 captions, iterations, peak GPU memory (GB)."""
    import cupy as cp

    from captioning.model import CaptioningRNN
    from captioning.trainer import CaptioningTrainer

    sizes = Sizes()
    rng = np.random.default_rng(0)
    num_images, num_captions = 82_783, 400_135
    data = synthetic_data(sizes, num_captions=num_captions, num_images=8)
    data["train_features"] = rng.random((num_images, sizes.D), dtype=np.float32)
    data["train_image_idxs"] = rng.integers(0, num_images, num_captions).astype(np.int32)
    pool = cp.get_default_memory_pool()
    model = CaptioningRNN(data["word_to_idx"], input_dim=sizes.D, wordvec_dim=sizes.W,
                          hidden_dim=sizes.H, cell_type="lstm", dtype=np.float32,
                          backend="cupy", seed=0, precision=precision)
    trainer = CaptioningTrainer(model, data, batch_size=batch_size, num_epochs=1,
                                verbose=False, seed=0)
    cp.cuda.get_current_stream().synchronize()
    start = time.perf_counter()
    history = trainer.train()
    cp.cuda.get_current_stream().synchronize()
    elapsed = time.perf_counter() - start
    assert np.isfinite(history).all() and history[-1] < history[0]
    return elapsed, len(history), pool.total_bytes() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epoch-batch", type=int, default=1024)
    parser.add_argument("--skip-epoch", action="store_true")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all): the training-step table, "
                        "the host's pace, the step's breakdown per precision, decoding, "
                        "the full epochs (also left out by --skip-epoch)")
    args = parser.parse_args()
    parts = set(args.parts) - ({"epoch"} if args.skip_epoch else set())
    import cupy as cp

    # (N, precision, CuPy seconds, PyTorch seconds padded and packed (or nan), FLOPs)
    rows = []
    for n in (128, 1024) if "steps" in parts else ():
        sizes = Sizes(N=n)
        data = synthetic_data(sizes, num_captions=4096, num_images=1024)
        for precision in PRECISIONS:
            t_cupy = median_time(library_step("cupy", sizes, data, precision=precision),
                                 repeats=20, warmup=5)
            t_torch = t_packed = float("nan")
            if not args.skip_torch:
                from benchmarks.torch_reference import torch_step

                t_torch, t_packed = (
                    median_time(torch_step(sizes, data, "cuda", precision, packed),
                                repeats=20, warmup=5) for packed in (False, True))
            rows.append((n, precision, t_cupy, t_torch, t_packed, sizes.flops()))
            print(f"N={n} {precision}: cupy {t_cupy * 1e3:.3f} ms, torch {t_torch * 1e3:.3f} ms,"
                  f" torch packed {t_packed * 1e3:.3f} ms", flush=True)
    decode = {}
    if "host" in parts:
        for graph in (False, True):
            issue = library_step("cupy", Sizes(N=128),
                                 synthetic_data(Sizes(N=128), 4096, 1024),
                                 synchronize=False, cuda_graph=graph)
            for _ in range(5):
                issue()
            cp.cuda.get_current_stream().synchronize()
            host, start = [], time.perf_counter()
            for _ in range(20):
                t0 = time.perf_counter()
                issue()
                host.append(time.perf_counter() - t0)
            cp.cuda.get_current_stream().synchronize()
            print(f"\nN=128 fp32 step {'replayed from its CUDA graph' if graph else 'op by op'}:"
                  f" the host takes {np.mean(host) * 1e3:.2f} ms to issue it; "
                  f"{(time.perf_counter() - start) / 20 * 1e3:.2f} ms per step in all (20 "
                  "steps back to back): equal figures mean the host sets the pace")
    for precision in PRECISIONS if "breakdown" in parts else ():
        print(f"\nwhere the CuPy {precision} step's time goes at N=1024 (each part timed "
              "alone, synced):")
        for part, seconds in step_breakdown("cupy", Sizes(N=1024), repeats=10,
                                            precision=precision).items():
            print(f"  {part:48s} {seconds * 1e3:8.2f} ms", flush=True)
    if "decoding" in parts:
        runs = []
        for images in (DECODE_IMAGES, 5000):
            runs.append((images, "CuPy beam 3 fp32", library_decode("cupy", Sizes(), 3,
                                                                    images)))
            for precision in ("fp32", "tf32"):
                runs.append((images, f"CuPy greedy {precision}", library_decode(
                    "cupy", Sizes(), 1, images, precision)))
                if not args.skip_torch:
                    from benchmarks.torch_reference import torch_greedy

                    runs.append((images, f"PyTorch greedy {precision}", torch_greedy(
                        Sizes(), decode_model("numpy", Sizes(), images)[1], "cuda",
                        precision)))
        decode = {(images, name): median_time(fn, repeats=5, warmup=2)
                  for images, name, fn in runs}
    epochs = {p: full_epoch(args.epoch_batch, p)
              for p in (("fp32", "bf16") if "epoch" in parts else ())}
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    peaks = card_peaks(name)
    print(f"\nGPU: {name}; peak TFLOP/s (dense, datasheet): "
          f"{peaks if peaks else 'not in the table: no share of peak'}")
    print("PyTorch: nn.LSTM + nn.Linear + Adam; fp32 = TF32 off everywhere, tf32 = TF32 "
          "allowed everywhere, bf16 = torch.autocast(bfloat16); padded: every step of "
          "every caption, packed: pack_padded_sequence (the scored steps only, as CuPy). "
          "FLOPs are the model's at every position, credited alike to all")
    if rows:
        print("| N | precision | CuPy ms | PyTorch padded ms | CuPy / padded | PyTorch "
              "packed ms | CuPy / packed | CuPy cap/s | model GFLOP/step | CuPy TFLOP/s | "
              "% of peak | PyTorch padded TFLOP/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n, precision, tc, tt, tp, flops in rows:
            share = f"{flops / tc / 1e12 / peaks[precision] * 100:.1f}" if peaks else "n/a"
            print(f"| {n} | {precision} | {tc * 1e3:.3f} | {tt * 1e3:.3f} | {tt / tc:.2f}x | "
                  f"{tp * 1e3:.3f} | {tp / tc:.2f}x | {n / tc:,.0f} | {flops / 1e9:.1f} | "
                  f"{flops / tc / 1e12:.1f} | {share} | {flops / tt / 1e12:.1f} |")
    for count in sorted({images for images, _ in decode}):
        print(f"\ndecoding {count} images x 16 steps (float32, H=512, V=1004; greedy "
              "and beam search replayed from a CUDA graph per batch shape): "
              + ", ".join(f"{name} {count / seconds:,.0f} captions/s"
                          for (images, name), seconds in decode.items() if images == count))
    for precision, (seconds, iters, peak) in epochs.items():
        print(f"\nfull epoch in {precision}, 400,135 captions, 4096-d features, batch "
              f"{args.epoch_batch}: {seconds:.2f} s ({iters} iterations, "
              f"{400_135 / seconds:,.0f} captions/s); peak GPU memory held by CuPy's pool "
              f"{peak:.2f} GB")


if __name__ == "__main__":
    main()
