"""Reduced-precision matrix products (tf32, bf16): refused where they cannot run, close
to float32 where they can, and never written into a checkpoint."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from backend import PRECISIONS, available_backends, choose_precision, get_backend
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.checkpoint import load_model, save_model
from conftest import random_captions
from cuda_on_cpu import COMPILER

gpu = pytest.mark.skipif(not available_backends()["cupy"].available,
                         reason=f"cupy unavailable: {available_backends()['cupy'].reason}")
VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 40)}}


def _model(backend, precision=None, dtype=np.float32, hidden=24, vocab=VOCAB):
    return CaptioningRNN(vocab, input_dim=32, wordvec_dim=16, hidden_dim=hidden,
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


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
def test_a_gpu_without_tf32_and_bfloat16_tensor_cores_refuses_those_precisions(monkeypatch):
    """On a Tesla T4 (compute capability 7.5, Colab's usual GPU) tf32 and bf16 are
    refused with what they need and what the GPU is; fp32 trains as everywhere."""
    import cupy_stand_in

    monkeypatch.setitem(cupy_stand_in.GPU, "ComputeCapabilityMajor", 7)
    monkeypatch.setitem(cupy_stand_in.GPU, "ComputeCapabilityMinor", 5)
    with cupy_stand_in.cupy_backend_on_cpu() as backend:
        for precision in ("tf32", "bf16"):
            with pytest.raises(ValueError, match=rf"precision '{precision}' needs an NVIDIA "
                               r"GPU of compute capability 8\.0 or newer .* this GPU's is "
                               r"7\.5: use precision fp32"):
                backend.with_precision(precision)
        assert backend.with_precision("fp32") is backend


@pytest.mark.parametrize(("precision", "tolerance"), [("tf32", 5e-3), ("bf16", 3e-2)])
@pytest.mark.parametrize(("hidden", "words"), [(24, 40), (512, 40), (24, 37)])
def test_the_loss_and_gradients_in_reduced_precision_are_near_fp32(cupy_backend, precision,
                                                                  tolerance, hidden, words):
    """37 words: the bf16 twin pads the vocabulary layer's operands to 40."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((37, 32)).astype(np.float32)  # N not a tile multiple
    captions = random_captions(rng, 37, vocab_size=words)
    vocab = {w: i for w, i in VOCAB.items() if i < words}
    loss32, grads32 = _model(cupy_backend, "fp32", hidden=hidden, vocab=vocab).loss(
        features, captions)
    loss, grads = _model(cupy_backend, precision, hidden=hidden, vocab=vocab).loss(
        features, captions)
    assert abs(loss - loss32) < tolerance * abs(loss32)
    for name, g in grads.items():
        assert g.dtype == np.float32
        assert _relative_error(g, grads32[name]) < 5 * tolerance, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("precision", "words"), [("tf32", 40), ("bf16", 40), ("bf16", 37)])
def test_recorded_reduced_precision_training_matches_op_by_op(precision, words, tmp_path):
    """37 words: the bf16 twin's padded vocabulary layer, recorded too."""
    rng = np.random.default_rng(1)
    data = {"train_captions": random_captions(rng, 96, vocab_size=words),
            "train_image_idxs": rng.integers(0, 48, 96).astype(np.int32),
            "train_features": rng.standard_normal((48, 32)).astype(np.float32)}
    runs = {}
    for graph in (False, True):
        model = _model("cupy", precision, vocab={w: i for w, i in VOCAB.items() if i < words})
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


# ---------------------------------------------------------------------- stored bf16 operands
def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16's 8 significant bits (to nearest, ties to even),
    as float64: the reference for normal numbers, infinities and NaN."""
    x = np.asarray(x, dtype=np.float64)
    mantissa, exponent = np.frexp(x)
    return np.ldexp(np.rint(mantissa * 2.0**8) / 2.0**8, exponent)  # rint: ties to even


def _widened(bits) -> np.ndarray:
    """bfloat16 bits (uint16) -> their float32 values."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def test_bf16_operands_are_rounded_to_nearest_even(cupy_backend):
    bf16 = cupy_backend.with_precision("bf16")
    assert bf16.operand_dtype == np.uint16 and cupy_backend.operand_dtype is None
    one_ulp = 2.0**-7  # bfloat16's spacing just above 1
    values = np.array([1.0, 1 + one_ulp / 2, 1 + 3 * one_ulp / 2, 1 + one_ulp / 2 + 2**-20,
                       -1 - one_ulp / 2, 3.14159265, -2.5e-30, 6.5e37, np.finfo(np.float32).max,
                       np.inf, -np.inf, 0.0, -0.0, np.nan], dtype=np.float32)
    spread = np.random.default_rng(4).standard_normal(3000) * 10.0 ** np.arange(-15, 15).repeat(100)
    values = np.concatenate([values, spread.astype(np.float32)])
    got = _widened(bf16.to_numpy(bf16.as_operand(bf16.asarray(values.reshape(-1, 2)))))
    with np.errstate(over="ignore"):  # float32's largest rounds up to 2**128: inf
        want = _bf16(values).astype(np.float32)
    np.testing.assert_array_equal(got.reshape(-1), want)
    assert np.signbit(got.reshape(-1)[12]) and np.isnan(got.reshape(-1)[13])
    assert got.reshape(-1)[8] == np.inf  # float32's largest rounds up past bfloat16's
    same = cupy_backend.asarray(values)
    assert cupy_backend.as_operand(same) is same  # no stored copies in fp32


@pytest.mark.parametrize("shape", [(128, 512, 2048), (37, 24, 40), (7, 21, 1004)])
def test_stored_bf16_operands_multiply_as_their_rounded_values(cupy_backend, shape):
    m, k, n = shape
    rng = np.random.default_rng(5)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    want = _bf16(a) @ _bf16(b)
    bf16 = cupy_backend.with_precision("bf16")
    a_op = bf16.as_operand(bf16.asarray(a))
    b_op_t = bf16.as_operand(bf16.asarray(b.T.copy()))  # stored transposed: a strided view
    for left, right in ((a_op, b_op_t.T), (a_op, bf16.asarray(b)),  # a float32 partner
                        (bf16.asarray(a), b_op_t.T)):
        got = bf16.matmul(left, right)
        assert got.dtype == np.float32 and got.shape == (m, n)
        assert _relative_error(bf16.to_numpy(got), want) < 1e-5  # float32 accumulation
    out = bf16.xp.empty((n, m), np.float32).T  # a strided output takes a copy
    bf16.matmul(a_op, b_op_t.T, out)
    assert _relative_error(bf16.to_numpy(out), want) < 1e-5
    with pytest.raises(ValueError, match="written as float32 or bfloat16, not float64"):
        bf16.matmul(a_op, b_op_t.T, bf16.xp.empty((m, n)))


def test_the_gate_kernels_write_stored_bf16_states_and_gradients(cupy_backend):
    """Given bfloat16 outputs for h (forward) and da (backward), the gate steps write
    them as bfloat16: what the float32 step writes, rounded. In the kernels, and in
    the base class's passes that a strided input falls back to."""
    bf16, xp = cupy_backend.with_precision("bf16"), cupy_backend.xp
    rng = np.random.default_rng(6)
    N, H = 37, 24

    def draw(*shape):
        return bf16.asarray(rng.standard_normal(shape).astype(np.float32))

    a, extra, prev_c = draw(N, 4 * H), draw(N, 4 * H), draw(N, H)
    outputs = {}
    for dtype in (np.float32, bf16.operand_dtype):
        c, tanh_c = (xp.empty((N, H), np.float32) for _ in range(2))
        h = xp.empty((N, H), dtype)
        gates = a.copy()
        bf16.lstm_gates_forward_sum(gates, extra, prev_c, c, h, tanh_c)
        outputs[np.dtype(dtype).name] = h
    np.testing.assert_array_equal(bf16.to_numpy(outputs["uint16"]),
                                  bf16.to_numpy(bf16.as_operand(outputs["float32"])))
    dh, dh_extra, dnext_c = draw(N, H), draw(N, H), draw(N, H)
    for strided in (False, True):  # a strided upstream part takes the base class's passes
        extra_part = xp.asfortranarray(dh_extra) if strided else dh_extra
        grads = {}
        for dtype in (np.float32, bf16.operand_dtype):
            da = xp.empty((N, 4 * H), dtype)
            bf16.lstm_gates_backward_sum(dh, extra_part, dnext_c.copy(), gates, prev_c, c,
                                         tanh_c, da)
            grads[np.dtype(dtype).name] = da
        np.testing.assert_array_equal(bf16.to_numpy(grads["uint16"]),
                                      bf16.to_numpy(bf16.as_operand(grads["float32"])))


def test_the_recurrent_products_of_stored_operands_are_kept_in_bf16(cupy_backend):
    """The bf16 twin's recurrent product of stored operands comes back as bfloat16: the
    float32 sums rounded once. The gate steps add such a product as its float32 values
    would be added, in the kernels and in the base class's passes (a strided input)."""
    bf16, xp = cupy_backend.with_precision("bf16"), cupy_backend.xp
    rng = np.random.default_rng(8)
    N, H = 37, 24

    def draw(*shape):
        return bf16.asarray(rng.standard_normal(shape).astype(np.float32))

    h, Wh = bf16.as_operand(draw(N, H)), bf16.as_operand(draw(H, 4 * H))
    product = bf16.recurrent_product(h, Wh, xp.empty((N, 4 * H), np.float32))
    assert product.dtype == bf16.operand_dtype and product.shape == (N, 4 * H)
    want = _widened(bf16.to_numpy(h)).astype(np.float64) @ _widened(bf16.to_numpy(Wh))
    widened = bf16.widen(product)
    assert _relative_error(bf16.to_numpy(widened), want) < 2**-8  # rounded to 8 bits
    a, prev_c = draw(N, 4 * H), draw(N, H)
    carried = bf16.recurrent_product(bf16.as_operand(draw(N, 4 * H)), Wh.T,
                                     xp.empty((N, H), np.float32))
    assert carried.dtype == bf16.operand_dtype
    dh, dnext_c = draw(N, H), draw(N, H)
    for strided in (False, True):  # a strided product takes the base class's passes
        states = {}
        for extra in (product, widened):
            c, tanh_c, h_out = (xp.empty((N, H), np.float32) for _ in range(3))
            gates = a.copy()
            bf16.lstm_gates_forward_sum(gates, xp.asfortranarray(extra) if strided else extra,
                                      prev_c, c, h_out, tanh_c)
            states[extra.dtype.name] = [bf16.to_numpy(x) for x in (gates, c, h_out, tanh_c)]
        for got, want_state in zip(states["uint16"], states["float32"]):
            np.testing.assert_array_equal(got, want_state)
        grads = {}
        for extra in (carried, bf16.widen(carried)):
            da = xp.empty((N, 4 * H), np.float32)
            dprev_c = dnext_c.copy()
            bf16.lstm_gates_backward_sum(dh, xp.asfortranarray(extra) if strided else extra,
                                         dprev_c, gates, prev_c, c, tanh_c, da)
            grads[extra.dtype.name] = [bf16.to_numpy(x) for x in (da, dprev_c)]
        for got, want_grad in zip(grads["uint16"], grads["float32"]):
            np.testing.assert_array_equal(got, want_grad)


def test_the_bf16_twin_keeps_looked_up_gates_as_rounded_pre_activations(cupy_backend):
    """The bf16 twin's looked-up steps keep their gates as the pre-activations rounded
    to bfloat16 (``lookup_gates``), and make h and c from those rounded values, so that
    the backward, which activates them again, gives what the float32 gates made from
    them give. In the kernels (bit for bit), and in the base class's passes that a
    strided input falls back to (their sigmoid is another formula: near 0 or 1, a
    gradient i (1 - i) differs in its last bits)."""
    bf16, xp = cupy_backend.with_precision("bf16"), cupy_backend.xp
    assert cupy_backend.lookup_gates(3, 8, np.float32).dtype == np.float32
    assert bf16.lookup_gates(3, 8, np.float64).dtype == np.float64
    rng = np.random.default_rng(11)
    N, H, V = 37, 24, 40

    def draw(*shape):
        return bf16.asarray((rng.standard_normal(shape) * 3).astype(np.float32))

    table, extra, prev_c = draw(V, 4 * H), draw(N, 4 * H), draw(N, H)
    words = bf16.asarray(rng.integers(0, V, N))
    dh, dh_extra, dnext_c = draw(N, H), draw(N, H), draw(N, H)
    # the reference: float32 gates made from the rounded pre-activations
    pre = bf16.as_operand(table[words] + extra)
    gates32 = bf16.widen(pre)
    c32, tanh_c32, h32 = (xp.empty((N, H), np.float32) for _ in range(3))
    bf16.lstm_gates_forward_sum(gates32, xp.zeros((N, 4 * H), np.float32), prev_c, c32, h32,
                                tanh_c32)
    da32, dprev_c32 = xp.empty((N, 4 * H), np.float32), dnext_c.copy()
    bf16.lstm_gates_backward_sum(dh, dh_extra, dprev_c32, gates32, prev_c, c32, tanh_c32,
                                 da32)
    for strided in (False, True):  # strided parts take the base class's passes
        gates = bf16.lookup_gates(N, 4 * H, np.float32)
        assert gates.dtype == bf16.operand_dtype and gates.shape == (N, 4 * H)
        c, tanh_c, h = (xp.empty((N, H), np.float32) for _ in range(3))
        bf16.lstm_gates_forward_lookup(table, words, xp.asfortranarray(extra) if strided
                                       else extra, prev_c, gates, c, h, tanh_c)
        np.testing.assert_array_equal(bf16.to_numpy(gates), bf16.to_numpy(pre))
        da, dprev_c = xp.empty((N, 4 * H), np.float32), dnext_c.copy()
        bf16.lstm_gates_backward_sum(dh, xp.asfortranarray(dh_extra) if strided else dh_extra,
                                     dprev_c, gates, prev_c, c, tanh_c, da)
        got = [bf16.to_numpy(x) for x in (c, h, tanh_c, da, dprev_c)]
        want = [bf16.to_numpy(x) for x in (c32, h32, tanh_c32, da32, dprev_c32)]
        for name, g, w in zip(("c", "h", "tanh_c", "da", "dprev_c"), got, want):
            if strided:
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(g, w, err_msg=name)


def test_a_stored_bf16_gradient_scatters_into_float32(cupy_backend):
    bf16 = cupy_backend.with_precision("bf16")
    rng = np.random.default_rng(9)
    words = rng.integers(0, 40, 300)
    words[:64] = 1  # a long run of one word, as every caption's <START>
    stored = bf16.as_operand(bf16.asarray(rng.standard_normal((300, 48)).astype(np.float32)))
    values = _widened(bf16.to_numpy(stored)).astype(np.float64)
    want = np.zeros((40, 48))
    np.add.at(want, words, values)
    got = bf16.embedding_backward(bf16.asarray(words), stored, 40)
    assert got.dtype == np.float32
    np.testing.assert_allclose(bf16.to_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_the_exercise_lstm_on_the_bf16_twin_returns_float32(cupy_backend):
    """The dense lstm_forward/backward keep their float32 contract on the bf16 twin,
    whose packed loops store states and gradients in bfloat16."""
    rng = np.random.default_rng(10)
    N, T, D, H = 5, 6, 7, 8
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, 4 * H)) / 3, rng.standard_normal((H, 4 * H)) / 3
    b, dh = rng.standard_normal(4 * H), rng.standard_normal((N, T, H))
    results = {}
    for precision in ("fp32", "bf16"):
        be = cupy_backend.with_precision(precision)
        args = [be.asarray(a.astype(np.float32)) for a in (x, h0, Wx, Wh, b)]
        h, cache = be.lstm_forward(*args)
        grads = be.lstm_backward(be.asarray(dh.astype(np.float32)), cache)
        results[precision] = [be.to_numpy(a) for a in (h, *grads)]
    for fp32, bf16 in zip(*results.values()):
        assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
        assert _relative_error(bf16, fp32) < 3e-2


@pytest.mark.parametrize("V", [1004, 2500])
def test_the_softmax_of_bf16_scores_writes_their_gradient_over_them(cupy_backend, V):
    """Scores stored in bfloat16 (the bf16 twin's vocabulary layer) give the loss their
    float32 values give, and their gradient, rounded, over them; rows wider than V (a
    padded vocabulary) keep their padding. 2,500 words: rows longer than a lane holds."""
    bf16 = cupy_backend.with_precision("bf16")
    rng = np.random.default_rng(8)
    M, padded = 37, V + 4
    scores = (rng.standard_normal((M, padded)) * 4).astype(np.float32)
    scores[:, V:] = 0
    bias = bf16.asarray(rng.standard_normal(V).astype(np.float32))
    y = rng.integers(0, V, M)
    weight = rng.uniform(-1, 1, M).astype(np.float32)
    args = [bf16.asarray(a) for a in (y, weight)]
    stored = bf16.as_operand(bf16.asarray(scores))
    loss32, grad32 = bf16.cross_entropy(bf16.widen(stored)[:, :V], *args, 5, bias=bias)
    loss16, grad16 = bf16.cross_entropy(stored[:, :V], *args, 5, overwrite=True, bias=bias)
    assert grad16.dtype == bf16.operand_dtype and grad32.dtype == np.float32
    assert float(loss16) == float(loss32)
    assert bf16.xp.shares_memory(grad16, stored)  # written over the scores
    np.testing.assert_array_equal(bf16.to_numpy(stored[:, :V]),
                                  bf16.to_numpy(bf16.as_operand(grad32)))
    np.testing.assert_array_equal(bf16.to_numpy(stored[:, V:]), 0)
    # the bias gradient: a float32 sum of the stored values
    np.testing.assert_allclose(bf16.to_numpy(bf16.sum_rows(stored))[:V],
                               _widened(bf16.to_numpy(stored)).astype(np.float64).sum(axis=0)[:V],
                               rtol=1e-5, atol=1e-7)
    kept = bf16.as_operand(bf16.asarray(scores))[:, :V]
    bf16.cross_entropy(kept, *args, 5, bias=bias)  # without overwrite: a copy's gradient
    np.testing.assert_array_equal(bf16.to_numpy(kept),
                                  bf16.to_numpy(bf16.as_operand(bf16.asarray(scores)))[:, :V])


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++) here to run the CUDA "
                    "kernels on the CPU; apt-get install g++")
@pytest.mark.parametrize("words", [40, 37])
def test_stored_bf16_operands_give_what_rounding_inside_each_product_gives(words):
    """On the CPU stand-in, whose cuBLAS rounds float32 operands to bfloat16 inside a
    "bf16" product (on a GPU, cuBLAS may take TF32 kernels for those instead), storing
    the operands in bfloat16 must give the same step: the same roundings, made once.
    And the LSTM step's big products do read stored bfloat16: T recurrent products
    each way, dWh's, the vocabulary layer's three, and its bias gradient's sum. What
    sums a stored gradient differs a little: b_vocab (the scores' gradient) and the
    word table's W_embed, Wx and b (the gates' gradient, scatter-added), which sum
    values rounded to bfloat16 (as PyTorch's autocast does), where rounding inside the
    products sums float32 ones. The recurrent products' results and the scores are kept
    in bfloat16 too (cuBLAS rounds them once, as PyTorch's autocast keeps them), which
    the reference does after its products; both keep the gates as bfloat16
    pre-activations (``lookup_gates``). A vocabulary of 37 words is padded to 40 in
    the stored operands of its layer (for cuBLAS's aligned kernels): the same step
    again."""
    import cupy_stand_in

    rng = np.random.default_rng(7)
    features = rng.standard_normal((37, 32)).astype(np.float32)
    captions = random_captions(rng, 37, vocab_size=words)
    vocab = {w: i for w, i in VOCAB.items() if i < words}
    T = captions.shape[1] - 1
    with cupy_stand_in.cupy_backend_on_cpu() as backend:
        stored = backend.with_precision("bf16")
        rounded_inside = copy.copy(stored)
        rounded_inside.operand_dtype = None

        def rounded(x):  # in place, as the stored step keeps a product's result
            x[...] = stored.widen(stored.as_operand(x))
            return x

        def rounded_result(x, w, out):
            rounded(rounded_inside.matmul(x, w, out))

        def entropy_of_rounded_scores(scores, *args, **kwargs):
            return type(stored).cross_entropy(rounded_inside, rounded(scores), *args,
                                              **kwargs)
        rounded_inside.recurrent_product = rounded_result
        rounded_inside.cross_entropy = entropy_of_rounded_scores
        rounded_inside.lookup_gates = stored.lookup_gates  # bfloat16 pre-activations
        for calls in (cupy_stand_in.cublas.input_types, cupy_stand_in.cublas.output_types,
                      cupy_stand_in.cublas.shapes):
            calls.clear()
        loss, grads = _model(stored, "bf16", vocab=vocab).loss(features, captions)
        assert cupy_stand_in.cublas.input_types.count(14) == 2 * T + 5  # CUDA_R_16BF
        # bfloat16 results: the recurrent products but the last one back (dh0, float32),
        # and the scores
        assert cupy_stand_in.cublas.output_types.count(14) == 2 * T
        bf16_shapes = [shape for shape, kind in zip(cupy_stand_in.cublas.shapes,
                                                    cupy_stand_in.cublas.input_types)
                       if kind == 14]
        # cuBLAS's (m, n, k), column-major: the vocabulary is m or k of the layer's three
        # products and of b_vocab's sum, padded to 40
        assert sum(40 in (m, k) for m, n, k in bf16_shapes) == 4
        assert not any(words in (m, k) for m, n, k in bf16_shapes) or words == 40
        want_loss, want = _model(rounded_inside, "bf16", vocab=vocab).loss(features, captions)
    assert abs(loss - want_loss) < 1e-6 * abs(want_loss)
    for name, g in grads.items():  # (the emulated scatter's atomics add in shuffled orders)
        summed_stored = name in ("b_vocab", "W_embed", "Wx", "b")
        assert _relative_error(g, want[name]) < (1e-2 if summed_stored else 1e-6), name
