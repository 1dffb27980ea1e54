"""Reduced-precision matrix products (tf32, bf16): refused where they cannot run, close
to float32 where they can, and never written into a checkpoint."""

import json
import subprocess
import sys

import numpy as np
import pytest

from backend import PRECISIONS, available_backends, choose_precision, get_backend
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.checkpoint import load_model, save_model
from conftest import random_captions

gpu = pytest.mark.skipif(not available_backends()["cupy"].available,
                         reason=f"cupy unavailable: {available_backends()['cupy'].reason}")
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}


def _model(backend, precision=None, dtype=np.float32, hidden=24):
    return CaptioningRNN(VOCAB, input_dim=32, wordvec_dim=16, hidden_dim=hidden,
                         cell_type="lstm", dtype=dtype, backend=backend, seed=0,
                         precision=precision)


def test_the_precision_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("CAPTION_PRECISION", raising=False)
    assert choose_precision() == "fp32"
    monkeypatch.setenv("CAPTION_PRECISION", " BF16 ")
    assert choose_precision() == "bf16"
    assert choose_precision("tf32") == "tf32"
    monkeypatch.setenv("CAPTION_PRECISION", "half")
    with pytest.raises(ValueError, match=r"'half' \(from \$CAPTION_PRECISION\).*fp32, tf32"):
        choose_precision()
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        choose_precision("fp16")


@pytest.mark.parametrize("name", [n for n, s in available_backends().items()
                                  if s.available and n != "cupy"])
def test_cpu_backends_multiply_in_fp32_only(name):
    be = get_backend(name)
    assert be.with_precision("fp32") is be and be.precision == "fp32"
    for precision in ("tf32", "bf16"):
        with pytest.raises(ValueError, match=f"'{precision}' needs the cupy backend.*{name}"):
            be.with_precision(precision)
        with pytest.raises(ValueError, match="needs the cupy backend"):
            _model(name, precision)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        be.with_precision("int8")


def test_reduced_precision_is_for_float32_models():
    with pytest.raises(ValueError, match="'bf16' is for float32 models; this one is float64"):
        _model("numpy", "bf16", dtype=np.float64)


def test_the_command_line_refuses_a_precision_before_reading_any_data(tmp_path):
    for args, expected in (
        (["--backend", "numpy", "--precision", "bf16"], "'bf16' needs the cupy backend"),
        (["--backend", "numpy", "--precision", "tf32", "--dtype", "float64"],
         "'tf32' is for float32 models"),
        (["--backend", "numpy", "--precision", "half"], "invalid choice: 'half'"),
    ):
        out = subprocess.run([sys.executable, "-m", "captioning", "train", "--data",
                              str(tmp_path / "absent"), "--out", str(tmp_path / "run"), *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_a_checkpoint_holds_no_precision(tmp_path):
    path = save_model(tmp_path / "m.npz", _model("numpy"))
    assert load_model(path, "numpy", "fp32").precision == "fp32"
    with pytest.raises(ValueError, match=r"m\.npz: precision 'bf16' needs the cupy"):
        load_model(path, "numpy", "bf16")


def test_the_decoding_commands_refuse_a_precision_the_backend_lacks(tmp_path):
    """caption, evaluate, sample and report take --precision too (tf32 decoding on a GPU
    is about twice fp32's rate); a CPU backend refuses it before writing anything."""
    path = save_model(tmp_path / "m.npz", _model("numpy"))
    features = tmp_path / "features.npy"
    np.save(features, np.zeros((3, 32), dtype=np.float32))
    out = tmp_path / "out"
    for command in (["caption", "--features", str(features), "--out", str(out / "c.jsonl")],
                    ["evaluate", "--json", str(out / "m.json")], ["sample"],
                    ["report", "--out", str(out)]):
        run = subprocess.run([sys.executable, "-m", "captioning", *command, "--checkpoint",
                              str(path), "--backend", "numpy", "--precision", "tf32"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, (command, run.stderr)
        assert "precision 'tf32' needs the cupy backend" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and not out.exists()


# ---------------------------------------------------------------------- on the GPU
def _relative_error(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("shape", [(128, 512, 2048), (1000, 512, 1004), (7, 33, 65)])
@pytest.mark.parametrize("transposed", [False, True])
def test_reduced_precision_products_are_near_float64_and_coarser_than_fp32(cupy_backend,
                                                                          shape, transposed):
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    # a strided view, or not
    da = cupy_backend.asarray(a.T.copy()).T if transposed else cupy_backend.asarray(a)
    errors = {}
    for precision in PRECISIONS:
        be = cupy_backend.with_precision(precision)
        assert be.precision == precision
        errors[precision] = _relative_error(be.to_numpy(be.matmul(da, be.asarray(b))), want)
    # float32 ~1e-7; TF32 keeps 10 mantissa bits (~1e-3 / sqrt(k)), bfloat16 7 (~1e-2)
    assert errors["fp32"] < 1e-6
    assert 10 * errors["fp32"] < errors["tf32"] < 2e-3
    assert 10 * errors["fp32"] < errors["bf16"] < 1e-2


def test_the_precision_twins_share_one_device_backend(cupy_backend):
    bf16 = cupy_backend.with_precision("bf16")
    assert bf16 is cupy_backend.with_precision("bf16")
    assert bf16.with_precision("fp32") is cupy_backend
    assert cupy_backend.precision == "fp32" and bf16.name == "cupy"


@pytest.mark.parametrize(("precision", "tolerance"), [("tf32", 5e-3), ("bf16", 3e-2)])
@pytest.mark.parametrize("hidden", [24, 512])
def test_the_loss_and_gradients_in_reduced_precision_are_near_fp32(cupy_backend, precision,
                                                                  tolerance, hidden):
    rng = np.random.default_rng(2)
    features = rng.standard_normal((37, 32)).astype(np.float32)  # N not a tile multiple
    captions = random_captions(rng, 37, vocab_size=40)
    loss32, grads32 = _model(cupy_backend, "fp32", hidden=hidden).loss(features, captions)
    loss, grads = _model(cupy_backend, precision, hidden=hidden).loss(features, captions)
    assert abs(loss - loss32) < tolerance * abs(loss32)
    for name, g in grads.items():
        assert g.dtype == np.float32
        assert _relative_error(g, grads32[name]) < 5 * tolerance, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_recorded_reduced_precision_training_matches_op_by_op(precision, tmp_path):
    rng = np.random.default_rng(1)
    data = {"train_captions": random_captions(rng, 96, vocab_size=40),
            "train_image_idxs": rng.integers(0, 48, 96).astype(np.int32),
            "train_features": rng.standard_normal((48, 32)).astype(np.float32)}
    runs = {}
    for graph in (False, True):
        model = _model("cupy", precision)
        trainer = CaptioningTrainer(model, data, batch_size=16, num_epochs=3, verbose=False,
                                    seed=0, cuda_graph=graph)
        runs[graph] = (trainer.train(), model.backend.to_numpy(model.params["Wh"]))
        assert model.backend.precision == precision
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-3, atol=1e-5)
    path = save_model(tmp_path / "bf16.npz", model)
    on_cpu = load_model(path, "numpy")
    assert on_cpu.precision == "fp32" and on_cpu.params["Wh"].dtype == np.float32
    np.testing.assert_array_equal(on_cpu.params["Wh"], runs[True][1])


@pytest.mark.gpu
@gpu
def test_captioning_a_file_in_tf32_on_the_gpu(tmp_path):
    path = save_model(tmp_path / "m.npz", _model("numpy"))
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(3).standard_normal((50, 32)).astype(np.float32))
    lines = {}
    for precision in ("fp32", "tf32"):
        out = tmp_path / f"{precision}.jsonl"
        run = subprocess.run([sys.executable, "-m", "captioning", "caption", "--checkpoint",
                              str(path), "--features", str(features), "--out", str(out),
                              "--backend", "cupy", "--precision", precision],
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        assert f"beam 1, {precision})" in run.stdout
        lines[precision] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["image_id"] for row in lines["tf32"]] == list(range(50))
    # TF32 rounds the products' operands to 10-bit mantissas: the likeliest word may
    # change where two are nearly tied, rarely at these sizes.
    same = sum(a["caption"] == b["caption"] for a, b in zip(lines["fp32"], lines["tf32"]))
    assert same >= 40
