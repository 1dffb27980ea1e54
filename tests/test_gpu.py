"""What is specific to the GPU backend, and how the project behaves where there is none."""

import subprocess
import sys

import numpy as np
import pytest

from backend import available_backends

gpu = pytest.mark.skipif(not available_backends()["cupy"].available,
                         reason=f"cupy unavailable: {available_backends()['cupy'].reason}")


def test_importing_the_project_never_imports_cupy():
    code = ("import sys, captioning, backend, kernels.numpy_backend; "
            "from captioning import *; print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_cupy_by_name_fails_clearly_where_it_cannot_run():
    status = available_backends()["cupy"]
    if status.available:
        pytest.skip("cupy runs here")
    assert "install" in status.reason or "device" in status.reason
    out = subprocess.run([sys.executable, "-m", "captioning", "train", "--backend", "cupy",
                          "--data", "/nonexistent"], capture_output=True, text=True)
    assert out.returncode == 1 and "cupy" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.gpu
@gpu
def test_training_on_the_gpu_lowers_the_loss():
    from captioning import CaptioningRNN, CaptioningTrainer
    from conftest import random_captions

    rng = np.random.default_rng(0)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}
    data = {"train_captions": random_captions(rng, 64, vocab_size=40),
            "train_image_idxs": np.arange(64, dtype=np.int32),
            "train_features": rng.standard_normal((64, 32)).astype(np.float32)}
    model = CaptioningRNN(vocab, input_dim=32, wordvec_dim=16, hidden_dim=64,
                          cell_type="lstm", dtype=np.float32, backend="cupy", seed=0)
    history = CaptioningTrainer(model, data, batch_size=16, num_epochs=20, verbose=False,
                                updater_config={"learning_rate": 5e-3}, seed=0).train()
    assert type(model.params["Wx"]).__module__.startswith("cupy")
    assert np.mean(history[-4:]) < 0.8 * np.mean(history[:4])  # random captions: no zero


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("dtype", "rtol", "hidden"), [(np.float64, 1e-10, 24),
                                                      (np.float32, 1e-5, 24),
                                                      (np.float32, 1e-5, 64)])
def test_recorded_training_matches_op_by_op_training(dtype, rtol, hidden):
    """(64 float32 units: the forward steps in the persistent kernel, a cooperative
    launch, recorded too.)"""
    from captioning import CaptioningRNN, CaptioningTrainer
    from conftest import random_captions

    rng = np.random.default_rng(1)
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}
    data = {"train_captions": random_captions(rng, 96, vocab_size=40),
            "train_image_idxs": rng.integers(0, 48, 96).astype(np.int32),
            "train_features": rng.standard_normal((48, 32)).astype(dtype)}
    runs = {}
    for graph in (False, True):
        model = CaptioningRNN(vocab, input_dim=32, wordvec_dim=16, hidden_dim=hidden,
                              cell_type="lstm", dtype=dtype, backend="cupy", seed=0)
        trainer = CaptioningTrainer(model, data, batch_size=16, num_epochs=3, verbose=False,
                                    seed=0, lr_decay=0.9, grad_clip=5.0, cuda_graph=graph)
        runs[graph] = (trainer.train(), model.backend.to_numpy(model.params["Wh"]), trainer)
    recorded = runs[True][2]
    step = recorded.training_step
    assert step.recording_off is None and step.graph.recording.graph is not None
    assert step.graph.recording.runs == 17  # 18 steps: the first runs op by op
    assert runs[False][2].training_step.graph is None
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=rtol)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=rtol * 100, atol=rtol)


@pytest.mark.gpu
@gpu
def test_the_persistent_kernels_build_and_a_barrier_that_never_fills_fails_the_launch():
    """Both persistent LSTM kernels build here (else small float32 batches quietly take a
    product and a gate kernel a step); and a grid barrier that can never fill (its count
    starts at 1, so the last block to arrive waits for one more) ends the launch with an
    error within seconds instead of hanging. In a process of its own: the error spoils
    its CUDA context."""
    from kernels.cupy_backend import persistent_kernel

    for name in ("lstm_persistent_forward", "lstm_persistent_backward"):
        assert persistent_kernel(name) is not None, f"{name} did not build (see the warning)"
    code = """
import cupy as cp, numpy as np
from kernels.cupy_backend import persistent_kernel
from kernels.cuda_sources import PERSISTENT_THREADS, persistent_grid, persistent_shared_bytes
H, N = 32, 32
f = lambda *shape: cp.zeros(shape, cp.float32)
starts = cp.asarray([0, N, 2 * N], cp.int64)  # two steps of N rows: one barrier between
args = (f(2 * N, 4 * H), np.uint64(0), f(N, H), f(H, 4 * H), starts, f(2 * N, H),
        f(2 * N, H), f(2 * N, 4 * H), cp.ones(1, cp.uint32), np.int32(0), np.int32(2),
        np.int32(H))
persistent_kernel("lstm_persistent_forward").kernel(
    (persistent_grid(N, H),), (PERSISTENT_THREADS,), args,
    shared_mem=persistent_shared_bytes(H), enable_cooperative_groups=True)
cp.cuda.runtime.deviceSynchronize()
print("the launch ended without an error")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "ended without an error" not in out.stdout, out.stdout
    assert "CUDA" in out.stderr, out.stderr[-2000:]


@pytest.mark.gpu
@gpu
def test_a_recording_that_synchronises_fails_and_nothing_of_it_runs():
    import cupy as cp

    from backend import RecordingFailed, get_backend

    be = get_backend("cupy")
    x = cp.zeros(4)

    def step():
        x[...] += 1
        return float(x.sum())  # a copy to the host: not allowed while recording

    recording = be.record(step)
    assert recording() == 4.0  # the first call runs op by op
    with pytest.raises(RecordingFailed, match="CUDA graph"):
        recording()
    np.testing.assert_array_equal(x.get(), np.ones(4))  # the refused call did nothing
    assert float((x + 1).sum()) == 8.0  # and the device still works


@pytest.mark.gpu
@gpu
def test_work_beside_sees_what_came_before_and_is_waited_for_at_its_join():
    """Backend.beside on a second stream, op by op and recorded into a CUDA graph: the
    work reads what the main stream wrote just before, and the main stream reads its
    results after the join, while a product of its own runs in between."""
    import cupy as cp

    from backend import get_backend

    be = get_backend("cupy")
    rng = np.random.default_rng(4)
    a = cp.asarray(rng.standard_normal((1024, 1024)))

    def step():
        b = be.matmul(a, a)  # the main stream
        join = be.beside(lambda: (be.matmul(b.T, b), be.sum_rows(b)))  # reads b
        c = be.matmul(a.T, a)  # the main stream again, beside it
        gram, sums = join()
        return gram + c, sums

    for run in (step, be.record(step)):
        for _ in range(3):  # (recorded: op by op, recorded, replayed)
            a[...] = cp.asarray(rng.standard_normal(a.shape))
            got = run()
            host = cp.asnumpy(a)
            b = host @ host
            want = b.T @ b + host.T @ host  # entries near 0 cancel: tolerance by the largest
            np.testing.assert_allclose(cp.asnumpy(got[0]), want, rtol=1e-9,
                                       atol=1e-12 * np.abs(want).max())
            np.testing.assert_allclose(cp.asnumpy(got[1]), b.sum(axis=0), rtol=1e-9)


# Each decoder that records, with the settings its recordings are filed under.
DECODERS = {
    "greedy": (lambda decoding, model, features: (decoding.greedy_decode(model, features, 12),),
               ("greedy", 12)),
    "beam": (lambda decoding, model, features: decoding.beam_decode(model, features, 3, 12,
                                                                    0.5),
             ("beam", 3, 12, 0.5)),
}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_recorded_decoding_matches_op_by_op_and_follows_the_parameters(cell, decoder):
    from captioning import CaptioningRNN, decoding

    decode, settings = DECODERS[decoder]
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}
    on_gpu, on_cpu = (CaptioningRNN(vocab, input_dim=32, wordvec_dim=16, hidden_dim=24,
                                    cell_type=cell, dtype=np.float64, backend=name, seed=0)
                      for name in ("cupy", "numpy"))
    rng = np.random.default_rng(0)

    def agree(rows: int = 37) -> None:
        features = rng.standard_normal((rows, 32))
        gpu_out, cpu_out = decode(decoding, on_gpu, features), decode(decoding, on_cpu, features)
        np.testing.assert_array_equal(gpu_out[0], cpu_out[0])  # the captions
        for a, b in zip(gpu_out[1:], cpu_out[1:]):  # beam search's log-probabilities
            np.testing.assert_allclose(a, b, rtol=1e-10)

    for _ in range(4):  # op by op, recorded, then replayed: each on new features
        agree()
    recordings = decoding._RECORDINGS[on_gpu]
    recording = recordings[(*settings, 37)]
    assert recording.run.graph is not None and recording.run.runs == 4
    for model in (on_gpu, on_cpu):  # changed in place: the replay reads the new values
        model.params["W_vocab"] *= -1.5
    agree()
    assert recording.run.runs == 5
    on_gpu.params["Wh"] = on_gpu.params["Wh"].copy()  # a new array: recorded anew
    agree()
    assert recordings[(*settings, 37)] is not recording
    agree(rows=5)  # another batch shape has its own recording
    assert sorted(recordings) == [(*settings, 5), (*settings, 37)]
