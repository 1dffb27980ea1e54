"""GPU figures for the CuPy backend beside PyTorch (cuDNN) on the same GPU.

python -m benchmarks.gpu_bench [--epoch-batch 1024] [--skip-epoch]

Prints, last, a table: training-step captions per second at N=128 and N=1024 for the
CuPy backend and PyTorch's nn.LSTM model, the time of one full epoch over 400,135
synthetic captions with 82,783 x 4096 float32 features, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

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


def full_epoch(batch_size: int) -> tuple[float, int, float]:
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
                          backend="cupy", seed=0)
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
    parser.add_argument("--steps-only", action="store_true",
                        help="only the training-step rows (no breakdown, no decoding)")
    args = parser.parse_args()
    import os

    import cupy as cp

    cupy_mode = "TF32" if os.environ.get("CUPY_TF32") == "1" else "FP32"
    rows = []
    for n in (128, 1024):
        sizes = Sizes(N=n)
        data = synthetic_data(sizes, num_captions=4096, num_images=1024)
        t_cupy = {graph: median_time(library_step("cupy", sizes, data, cuda_graph=graph),
                                     repeats=20, warmup=5) for graph in (True, False)}
        t_torch = {}
        if not args.skip_torch:
            from benchmarks.torch_reference import torch_step

            for label, tf32 in (("default", None), ("FP32", False)):
                t_torch[label] = median_time(
                    torch_step(sizes, data, "cuda", tf32=tf32), repeats=20, warmup=5)
        rows.append((n, t_cupy, t_torch, sizes.flops()))
        print(f"N={n}: cupy {t_cupy[True] * 1e3:.2f} ms (graph), {t_cupy[False] * 1e3:.2f} ms "
              "(op by op), torch "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t_torch.items()), flush=True)
    decode = {}
    if not args.steps_only:
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
            print(f"\nN=128 step {'replayed from its CUDA graph' if graph else 'op by op'}: "
                  f"the host takes {np.mean(host) * 1e3:.2f} ms to issue it; "
                  f"{(time.perf_counter() - start) / 20 * 1e3:.2f} ms per step in all (20 "
                  "steps back to back): equal figures mean the host sets the pace")
        print("\nwhere the CuPy step's time goes at N=1024 (each part timed alone, synced):")
        for part, seconds in step_breakdown("cupy", Sizes(N=1024), repeats=10).items():
            print(f"  {part:48s} {seconds * 1e3:8.2f} ms", flush=True)
        decode = {f"CuPy beam {b}" if b > 1 else "CuPy greedy":
                  median_time(library_decode("cupy", Sizes(), b), repeats=5, warmup=2)
                  for b in (1, 3)}
    if decode and not args.skip_torch:
        from benchmarks.torch_reference import torch_greedy

        decode["PyTorch nn.LSTM greedy"] = median_time(
            torch_greedy(Sizes(), decode_model("numpy", Sizes())[1], "cuda"), 5, 2)
    epoch = None if args.skip_epoch else full_epoch(args.epoch_batch)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\nGPU: {name}; CuPy matmuls in {cupy_mode}")
    print("| N | CuPy graph cap/s | CuPy op-by-op cap/s | PyTorch default cap/s | "
          "PyTorch FP32 cap/s | graph / default | graph / FP32 | graph TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for n, tc, tt, flops in rows:
        d, f = tt.get("default", float("nan")), tt.get("FP32", float("nan"))
        print(f"| {n} | {n / tc[True]:,.0f} | {n / tc[False]:,.0f} | {n / d:,.0f} | "
              f"{n / f:,.0f} | {d / tc[True]:.2f}x | {f / tc[True]:.2f}x | "
              f"{flops / tc[True] / 1e12:.1f} |")
    if decode:
        print(f"\ndecoding {DECODE_IMAGES} images x 16 steps (float32, H=512, V=1004): "
              + ", ".join(f"{k} {DECODE_IMAGES / v:,.0f} captions/s" for k, v in decode.items()))
    if epoch:
        seconds, iters, peak = epoch
        print(f"\nfull epoch, 400,135 captions, 4096-d features, batch {args.epoch_batch}: "
              f"{seconds:.1f} s ({iters} iterations, {400_135 / seconds:,.0f} captions/s); "
              f"peak GPU memory held by CuPy's pool {peak:.2f} GB")


if __name__ == "__main__":
    main()
