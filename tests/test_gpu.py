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
