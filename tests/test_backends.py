"""Backend selection, and every backend against the textbook formulas on random inputs."""

import types

import numpy as np
import pytest

import backend as backend_pkg
from backend import BackendUnavailable, available_backends, get_backend
from benchmarks import textbook
from captioning import rel_error
from captioning.optim import adam_table
from kernels.cuda_sources import SORT_MOST_WORDS

TOL = {np.float64: 1e-10, np.float32: 1e-4}


def test_default_and_environment(monkeypatch):
    monkeypatch.delenv("CAPTION_BACKEND", raising=False)
    assert get_backend().name == "numpy"
    monkeypatch.setenv("CAPTION_BACKEND", "NumPy")
    assert get_backend().name == "numpy"


def test_unknown_backend_lists_the_known_ones(monkeypatch):
    expected = "unknown backend 'torch'; expected one of: numpy, numba, cupy, auto"
    with pytest.raises(ValueError, match=expected):
        get_backend("torch")
    monkeypatch.setenv("CAPTION_BACKEND", "jax")
    with pytest.raises(ValueError, match=r"'jax' \(from \$CAPTION_BACKEND\)"):
        get_backend()


@pytest.mark.parametrize("name", ["numpy", "numba", "cupy"])
def test_available_backends_says_why_and_agrees_with_get_backend(name):
    status = available_backends()[name]
    assert status.name == name
    if status.available:
        assert status.reason == "ok" and get_backend(name).name == name
    else:
        assert "install" in status.reason or "device" in status.reason
        with pytest.raises(BackendUnavailable, match=f"backend '{name}'"):
            get_backend(name)
    assert available_backends()["numpy"].available


def test_missing_package_names_it_and_how_to_install(monkeypatch):
    """A kernel module whose package is absent: the error names the package and the fix."""
    registry = backend_pkg.registry

    def import_without_numba(name):
        raise ModuleNotFoundError("No module named 'numba'", name="numba")

    monkeypatch.setattr(registry.importlib, "import_module", import_without_numba)
    monkeypatch.delitem(registry._instances, "numba", raising=False)
    with pytest.raises(BackendUnavailable, match=r"needs the Python package 'numba'.*\[numba\]"):
        get_backend("numba")
    assert not available_backends()["numba"].available


def _pretend(monkeypatch, present: set[str]):
    """Kernel modules import only for the backends in ``present`` (a stand-in answers for
    cupy, so the order can be checked without a GPU)."""
    registry = backend_pkg.registry
    real_import = registry.importlib.import_module

    def fake_import(module):
        name = module.rsplit(".", 1)[-1].removesuffix("_backend")
        if name not in present:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == "cupy":
            class CupyBackend(real_import("kernels.numpy_backend").NumpyBackend):
                name = "cupy"
            return types.SimpleNamespace(CupyBackend=CupyBackend)
        return real_import(module)

    monkeypatch.setattr(registry.importlib, "import_module", fake_import)
    for name in ("numba", "cupy"):
        monkeypatch.delitem(registry._instances, name, raising=False)


@pytest.mark.parametrize(("present", "fastest"), [
    ({"numpy"}, "numpy"), ({"numpy", "numba"}, "numba"), ({"numpy", "numba", "cupy"}, "cupy")])
def test_auto_picks_the_fastest_backend_that_runs_here(monkeypatch, present, fastest):
    if "numba" in present and not available_backends()["numba"].available:
        pytest.skip("numba is not installed here")
    _pretend(monkeypatch, present)
    assert get_backend("auto").name == fastest
    monkeypatch.setenv("CAPTION_BACKEND", "auto")
    assert get_backend().name == fastest
    monkeypatch.delenv("CAPTION_BACKEND")
    assert get_backend().name == "numpy"  # the Python API's default stays the reference


def test_a_kernel_module_that_fails_to_import_is_a_bug_not_a_missing_backend(monkeypatch):
    """Only a missing third-party package makes a backend unavailable; a broken module of
    the project's own raises, so the test suite fails instead of skipping that backend."""
    registry = backend_pkg.registry

    def broken_import(name):
        raise ModuleNotFoundError("No module named 'kernels.cuda_graphs'",
                                  name="kernels.cuda_graphs")

    monkeypatch.setattr(registry.importlib, "import_module", broken_import)
    monkeypatch.delitem(registry._instances, "numba", raising=False)
    with pytest.raises(ModuleNotFoundError, match="kernels.cuda_graphs"):
        get_backend("numba")
    with pytest.raises(ModuleNotFoundError):
        available_backends()

    def third_party_breaks(name):
        raise ImportError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(registry.importlib, "import_module", third_party_breaks)
    with pytest.raises(BackendUnavailable, match="fails to import here.*libcudart"):
        get_backend("numba")


# ---------------------------------------------------------------- parity with the textbook
# Every backend, numpy included, against the exercise's formulas written independently
# (benchmarks/textbook.py), evaluated in float64 from the same inputs.
SHAPES = [(1, 1, 3, 5), (4, 7, 6, 9), (3, 5, 8, 13)]  # N, T, D, H (H not a multiple of 8)


def _inputs(rng, N, T, D, H, k, dtype):
    def r(*s):
        return rng.standard_normal(s).astype(dtype)
    return r(N, T, D), r(N, H), r(D, k * H), r(H, k * H), r(k * H), r(N, T, H)


def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _close(be, got, want, dtype):
    """float64: the exercise's elementwise rel_error; float32, whose summation order moves
    near-zero elements by more than 1e-4 of themselves: max |g - w| / max |w|."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = be.to_numpy(g)
        assert g.dtype == dtype
        assert g.shape == np.shape(w)
        if dtype == np.float64:
            assert rel_error(g, w) < TOL[dtype]
        else:
            assert np.abs(g - w).max() <= TOL[dtype] * np.abs(w).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequences_match_the_textbook(backend, cell, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x, h0, Wx, Wh, b, dh = _inputs(rng, *shape, 4 if cell == "lstm" else 1, dtype)
    fwd, bwd = f"{cell}_forward", f"{cell}_backward"
    h_ref, caches = getattr(textbook, fwd)(*_f64(x, h0, Wx, Wh, b))
    h, cache = getattr(backend, fwd)(*(backend.asarray(a) for a in (x, h0, Wx, Wh, b)))
    _close(backend, [h], [h_ref], dtype)
    _close(backend, getattr(backend, bwd)(backend.asarray(dh), cache),
           getattr(textbook, bwd)(*_f64(dh), caches), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 5), (5, 1, 8, 13)])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_single_steps_match_the_textbook(backend, cell, shape, dtype):
    rng = np.random.default_rng(1)
    x, h, Wx, Wh, b, _ = _inputs(rng, *shape, 4 if cell == "lstm" else 1, dtype)
    x, c = x[:, 0], rng.standard_normal(h.shape).astype(dtype)
    dnext_h, dnext_c = h[::-1].copy(), c[::-1].copy()
    if cell == "rnn":
        ref = textbook.rnn_step_forward(*_f64(x, h, Wx, Wh, b))
        got = backend.rnn_step_forward(*(backend.asarray(a) for a in (x, h, Wx, Wh, b)))
        _close(backend, got[:1], ref[:1], dtype)
        _close(backend, backend.rnn_step_backward(backend.asarray(dnext_h), got[1]),
               textbook.rnn_step_backward(*_f64(dnext_h), ref[1]), dtype)
        return
    ref = textbook.lstm_step_forward(*_f64(x, h, c, Wx, Wh, b))
    got = backend.lstm_step_forward(*(backend.asarray(a) for a in (x, h, c, Wx, Wh, b)))
    _close(backend, got[:2], ref[:2], dtype)
    _close(backend, backend.lstm_step_backward(backend.asarray(dnext_h),
                                               backend.asarray(dnext_c), got[2]),
           textbook.lstm_step_backward(*_f64(dnext_h, dnext_c), ref[2]), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("N", "H"), [(1, 1), (7, 13), (300, 64)])
def test_halved_gates_match_the_textbook_cell(backend, N, H, dtype):
    """Decoding's cell update from half-scaled i, f, o pre-activations."""
    rng = np.random.default_rng(H)
    a = (3 * rng.standard_normal((N, 4 * H))).astype(dtype)
    prev_c = rng.standard_normal((N, H)).astype(dtype)
    next_h, next_c, _ = textbook.lstm_cell(*_f64(a, prev_c))
    halved = a.copy()
    halved[:, : 3 * H] *= 0.5
    got_c, got_h = (backend.xp.empty((N, H), dtype=dtype) for _ in range(2))
    backend.lstm_gates_forward_halved(backend.asarray(halved), backend.asarray(prev_c),
                                      got_c, got_h)
    _close(backend, [got_c, got_h], [next_c, next_h], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("M", "N", "H", "V"), [(1, 1, 1, 2), (4, 12, 13, 9), (100, 300, 64, 50)])
@pytest.mark.parametrize("gathered", [True, False])
def test_decode_gates_match_the_textbook_cell(backend, M, N, H, V, dtype, gathered):
    """Decoding's step: rows gathered from earlier rows (or a slice), words looked up."""
    rng = np.random.default_rng(N)
    hw = (3 * rng.standard_normal((M if gathered else N + 2, 4 * H))).astype(dtype)
    table = rng.standard_normal((V, 4 * H)).astype(dtype)
    prev_c = rng.standard_normal((len(hw), H)).astype(dtype)
    words = rng.integers(0, V, N)
    rows = rng.integers(0, M, N) if gathered else slice(2, N + 2)
    next_h, next_c, _ = textbook.lstm_cell(*_f64(hw[rows] + table[words], prev_c[rows]))
    for t in (hw, table):
        t[:, : 3 * H] *= 0.5
    got_c, got_h = (backend.xp.empty((N, H), dtype=dtype) for _ in range(2))
    rows = backend.asarray(rows) if gathered else rows
    backend.lstm_decode_gates(*(backend.asarray(x) for x in (hw, table, words, prev_c)),
                              got_c, got_h, rows)
    _close(backend, [got_c, got_h], [next_c, next_h], dtype)


def test_numba_float32_tanh_is_accurate_everywhere():
    """The rational tanh the Numba decoding step uses, against float64 tanh."""
    numba_backend = pytest.importorskip("kernels.numba_backend")
    x = np.concatenate([np.linspace(-12, 12, 400_001)[::97], [0.0, 1e-30, -1e-7, 50, -1e4]])
    x = x.astype(np.float32)
    got = np.array([numba_backend._tanh32(v) for v in x], dtype=np.float32)
    want = np.tanh(x.astype(np.float64))
    assert np.abs(got - want).max() < 5e-7
    assert np.all(np.abs(got) <= 1)
    assert got[-5] == 0 and got[-3] < 0 and got[-2] == 1 and got[-1] == -1
    special = [numba_backend._tanh32(np.float32(v)) for v in (np.nan, np.inf, -np.inf)]
    assert np.isnan(special[0]) and special[1:] == [1, -1]


def test_numba_decode_step_passes_nan_on():
    """A NaN pre-activation gives NaN states, not a clamped +-1 (the compiled loop)."""
    backend = pytest.importorskip("kernels.numba_backend").NumbaBackend()
    H = 16
    hw, table = np.zeros((2, 4 * H), np.float32), np.zeros((3, 4 * H), np.float32)
    hw[1] = np.nan
    next_c, next_h = np.empty((2, H), np.float32), np.empty((2, H), np.float32)
    backend.lstm_decode_gates(hw, table, np.array([0, 2]), np.zeros((2, H), np.float32),
                              next_c, next_h, slice(0, 2))
    assert np.isfinite(next_h[0]).all() and np.isnan(next_h[1]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("K", "V", "D"), [(1, 1, 1), (50, 5, 6), (2048, 1004, 37),
                                           (300, SORT_MOST_WORDS + 1, 3)])
def test_scatter_add_matches_the_textbook(backend, K, V, D, dtype):
    """(CuPy sorts the rows by word first, except for a vocabulary of more than
    SORT_MOST_WORDS.)"""
    rng = np.random.default_rng(K)
    idx = rng.integers(0, V, K)
    idx[: K // 2] = idx[0]  # many repeats of one word
    dout = rng.standard_normal((K, D)).astype(dtype)
    dout[K // 3 : K // 2] = 0  # zero rows, as padding's gradient (CuPy skips zero sums)
    idx[K // 2 :: 3] -= V  # negative indices count from the end, as in np.add.at
    got = backend.embedding_backward(backend.asarray(idx), backend.asarray(dout), V)
    _close(backend, [got], [textbook.embedding_backward(idx, *_f64(dout), V)], dtype)


@pytest.mark.parametrize("V", [7, SORT_MOST_WORDS + 1])
def test_cupy_scatter_add_skips_words_outside_the_vocabulary(cupy_backend, V):
    """Sorted by word or not, an index outside [-V, V) adds nothing and is never
    written through (np.add.at raises; the model checks its words where it loads them)."""
    idx = np.array([1, V, 2, -V - 1, 1, 3 * V, -1, 2])
    dout = np.arange(1.0, 1.0 + 8 * 3).reshape(8, 3)
    inside = (idx >= -V) & (idx < V)
    want = np.zeros((V, 3))
    np.add.at(want, idx[inside], dout[inside])
    got = cupy_backend.embedding_backward(cupy_backend.asarray(idx),
                                          cupy_backend.asarray(dout), V)
    np.testing.assert_array_equal(cupy_backend.to_numpy(got), want)


def test_numpy_scatter_add_in_chunks_sums_in_the_textbook_order(monkeypatch):
    """NumPy's scatter-add goes through dout in chunks of rows; with chunks of 3 rows
    (and a last, shorter one) it still adds every row, in order, as one np.add.at."""
    from kernels import numpy_backend

    monkeypatch.setattr(numpy_backend, "_SCATTER_CHUNK", 3 * 4)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 4, (5, 2)).astype(np.int32)  # time-major word indices
    dout = rng.standard_normal((5, 2, 4)).astype(np.float32)
    got = numpy_backend.NumpyBackend().embedding_backward(idx, dout, 6)
    want = np.zeros((6, 4), np.float32)
    np.add.at(want, idx.reshape(-1), dout.reshape(-1, 4))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("N", "T", "V"), [(1, 1, 2), (7, 8, 9), (16, 4, 1004), (3, 2, 2500)])
def test_softmax_loss_matches_the_textbook(backend, N, T, V, dtype):
    """(2,500 words: a GPU kernel holding 1,024 scores of a row at a time reads it in
    three chunks.)"""
    rng = np.random.default_rng(V)
    x = (3 * rng.standard_normal((N, T, V))).astype(dtype)
    y = rng.integers(0, V, (N, T))
    mask = rng.random((N, T)) > 0.3
    got = backend.softmax_loss(*(backend.asarray(a) for a in (x, y, mask)))
    _close(backend, got, textbook.temporal_softmax_loss(*_f64(x), y, mask), dtype)


def _adam_inputs(dtype):
    rng = np.random.default_rng(5)
    w, dw, m, v = (rng.standard_normal((37, 11)).astype(dtype) for _ in range(4))
    return w, dw, m, np.abs(v)  # v is non-negative


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_matches_the_textbook(backend, dtype):
    w, dw, m, v = _adam_inputs(dtype)
    want = textbook.adam(*_f64(w, dw, m, v), 3, 2e-3, 0.8, 0.99, 1e-6)
    dev = [backend.asarray(a.copy()) for a in (w, dw, m, v)]
    backend.adam_update(*dev, 3, 2e-3, 0.8, 0.99, 1e-6)
    _close(backend, [dev[0], dev[2], dev[3]], want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_from_a_device_table_matches_the_textbook(backend, dtype):
    w, dw, m, v = _adam_inputs(dtype)
    want = textbook.adam(*_f64(w, dw, m, v), 3, 2e-3, 0.8, 0.99, 1e-6)
    config = {"t": 2, "learning_rate": 2e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}
    table = backend.asarray(adam_table([config, {**config, "t": 7}], dtype))
    dev = [backend.asarray(a.copy()) for a in (w, dw, m, v)]
    backend.adam_update_device(*dev, table[0])
    _close(backend, [dev[0], dev[2], dev[3]], want, dtype)


def _operand(be, rng, rows, cols, layout, dtype):
    """A (rows, cols) matrix laid out as training's operands are: contiguous (C), a
    transposed view (T: W.T, x.T), or rows further apart than their length (S). Returns
    it on the host and as the same view of a device copy."""
    if layout == "T":
        base = rng.standard_normal((cols, rows)).astype(dtype)
        return base.T, be.asarray(base).T
    if layout == "S":
        base = rng.standard_normal((rows, cols + 3)).astype(dtype)
        return base[:, 1 : cols + 1], be.asarray(base)[:, 1 : cols + 1]
    base = rng.standard_normal((rows, cols)).astype(dtype)
    return base, be.asarray(base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layouts", ["CC", "CT", "TC", "TT", "SC", "CS"])
@pytest.mark.parametrize(("M", "K", "N"), [(1, 1, 1), (7, 5, 3), (33, 64, 17), (4, 0, 6)])
def test_matmul_matches_numpy_for_every_layout(backend, M, K, N, layouts, dtype):
    rng = np.random.default_rng(M * K + N)
    (a, dev_a), (b, dev_b) = (_operand(backend, rng, M, K, layouts[0], dtype),
                              _operand(backend, rng, K, N, layouts[1], dtype))
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = {"rtol": TOL[dtype], "atol": TOL[dtype] * max(K, 1)}
    got = backend.to_numpy(backend.matmul(dev_a, dev_b))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **tol)
    wide = backend.asarray(np.full((M, N + 2), 7, dtype))  # into a row-strided view
    backend.matmul(dev_a, dev_b, wide[:, 1 : N + 1])
    wide = backend.to_numpy(wide)
    np.testing.assert_allclose(wide[:, 1 : N + 1], want, **tol)
    assert (wide[:, 0] == 7).all() and (wide[:, -1] == 7).all()


def test_sigmoid_is_stable():
    from captioning import sigmoid

    with np.errstate(all="raise"):
        out = sigmoid(np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0]))
    np.testing.assert_allclose(out, [0, 1 / (1 + np.exp(30)), 0.5, 1 / (1 + np.exp(-30)), 1],
                               atol=1e-15)


# ---------------------------------------------------------------- any operand layout
def _strided(be, host):
    """A device view holding ``host`` whose rows are not contiguous (every other column
    of an array twice as wide)."""
    wide = be.xp.zeros((host.shape[0], 2 * host.shape[1]), dtype=host.dtype)
    wide[:, ::2] = be.asarray(host)
    return wide[:, ::2]


def _strided_empty(be, shape, dtype):
    return be.xp.full((shape[0], 2 * shape[1]), np.nan, dtype=dtype)[:, ::2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_overridable_operation_honours_strided_inputs_and_outputs(backend, dtype):
    """Each operation a backend overrides, with non-contiguous inputs and outputs: the
    same answers as the textbook (a kernel that assumed contiguity would scramble them,
    or update a copy and lose it)."""
    rng = np.random.default_rng(7)
    N, H, V = 5, 6, 9
    assert not _strided(backend, np.zeros((2, 3), dtype)).flags.c_contiguous

    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    def out(*shape):
        return _strided_empty(backend, shape, dtype)

    a, prev_c = r(N, 4 * H, scale=2), r(N, H)
    want_h, want_c, gates = textbook.lstm_cell(*_f64(a, prev_c))

    got = [out(N, 4 * H), out(N, H), out(N, H), out(N, H)]
    backend.lstm_gates_forward(_strided(backend, a), _strided(backend, prev_c), *got)
    _close(backend, got[1:3], [want_c, want_h], dtype)
    _close(backend, [got[0]], [np.hstack(gates)], dtype)

    half = a.copy()
    half[:, : 3 * H] *= 0.5
    got = [out(N, H), out(N, H)]
    backend.lstm_gates_forward_halved(_strided(backend, half), _strided(backend, prev_c), *got)
    _close(backend, got, [want_c, want_h], dtype)

    got = [out(N, H), out(N, H)]  # every row from one earlier row, word 0 adds nothing
    backend.lstm_decode_gates(_strided(backend, half), backend.xp.zeros((1, 4 * H), dtype),
                              backend.asarray(np.zeros(N, np.int64)),
                              _strided(backend, prev_c), *got,
                              backend.asarray(np.arange(N)))
    _close(backend, got, [want_c, want_h], dtype)

    got = [_strided(backend, a), out(N, H), out(N, H), out(N, H)]  # the sum, in place in a
    backend.lstm_gates_forward_sum(got[0], backend.xp.zeros((N, 4 * H), dtype),
                                   _strided(backend, prev_c), *got[1:])
    _close(backend, got[1:3], [want_c, want_h], dtype)

    dnext_h, dnext_c = r(N, H), r(N, H)
    want_da, want_dprev_c = textbook.lstm_cell_backward(
        *_f64(dnext_h, dnext_c), _f64(*gates), *_f64(prev_c), want_c)
    activated = np.hstack(gates).astype(dtype)
    tanh_c = np.tanh(want_c).astype(dtype)
    inputs = [_strided(backend, x) for x in (dnext_h, dnext_c, activated, prev_c, tanh_c)]
    got = [out(N, 4 * H), out(N, H)]
    backend.lstm_gates_backward(*inputs, *got)
    _close(backend, got, [want_da, want_dprev_c], dtype)

    next_c = _strided(backend, want_c.astype(dtype))
    for kept_tanh_c in (inputs[4], None):  # tanh(c) kept, or made again from c
        carried = _strided(backend, dnext_c)  # becomes dprev_c, in place
        got = out(N, 4 * H)
        backend.lstm_gates_backward_sum(_strided(backend, dnext_h),
                                        backend.xp.zeros((N, H), dtype), carried, inputs[2],
                                        inputs[3], next_c, kept_tanh_c, got)
        _close(backend, [got, carried], [want_da, want_dprev_c], dtype)

    next_h = np.tanh(r(N, H))
    got = out(N, H)
    backend.rnn_gates_backward(_strided(backend, dnext_h), _strided(backend, next_h), got)
    _close(backend, [got], [dnext_h.astype(np.float64) * (1 - next_h.astype(np.float64) ** 2)],
           dtype)

    idx, dout = rng.integers(0, V, 2 * N), r(2 * N, H)
    got = backend.embedding_backward(backend.asarray(idx), _strided(backend, dout), V)
    _close(backend, [got], [textbook.embedding_backward(idx, *_f64(dout), V)], dtype)

    scores, y = r(N, V, scale=3), rng.integers(0, V, N)
    loss, dscores = backend.cross_entropy(_strided(backend, scores), backend.asarray(y),
                                          backend.xp.ones(N, dtype=dtype), N)
    want = textbook.temporal_softmax_loss(*_f64(scores[:, None]), y[:, None],
                                          np.ones((N, 1), bool))
    _close(backend, [loss, dscores], [want[0], want[1][:, 0]], dtype)
    bias = r(V, scale=3)  # added to every row first: into a copy, or in place
    want = textbook.temporal_softmax_loss(*_f64((scores + bias)[:, None]), y[:, None],
                                          np.ones((N, 1), bool))
    for given, overwrite in ((_strided(backend, scores), False),
                             (backend.asarray(scores.copy()), True)):
        got = backend.cross_entropy(given, backend.asarray(y), backend.xp.ones(N, dtype=dtype),
                                    N, overwrite=overwrite, bias=backend.asarray(bias))
        _close(backend, list(got), [want[0], want[1][:, 0]], dtype)

    w, dw, m, v = r(N, H), r(N, H), r(N, H), np.abs(r(N, H))
    want = textbook.adam(*_f64(w, dw, m, v), 3, 2e-3, 0.8, 0.99, 1e-6)
    for update in ("adam_update", "adam_update_device"):
        dev = [_strided(backend, x) for x in (w, dw, m, v)]
        if update == "adam_update":
            backend.adam_update(*dev, 3, 2e-3, 0.8, 0.99, 1e-6)
        else:
            config = {"t": 2, "learning_rate": 2e-3, "beta1": 0.8, "beta2": 0.99,
                      "epsilon": 1e-6}
            backend.adam_update_device(*dev, backend.asarray(adam_table([config], dtype))[0])
        _close(backend, [dev[0], dev[2], dev[3]], want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_over_many_parameters_is_adam_over_each(backend, dtype):
    """adam_update_device_many: eleven parameters of many sizes (one empty, more than
    one launch's worth on a GPU), each with its own row of scalars; a strided one makes
    the whole list take one parameter at a time."""
    rng = np.random.default_rng(12)
    shapes = [(40, 30), (30,), (0,), (5, 7), (1,), (64, 64), (3,), (9, 2), (7,), (33, 5), (2,)]
    configs = [{"t": t, "learning_rate": 10.0 ** -t, "beta1": 0.8, "beta2": 0.99,
                "epsilon": 1e-6} for t in range(1, len(shapes) + 1)]
    hyper = backend.asarray(adam_table(configs, dtype))
    for strided in (False, True):
        host = [(rng.standard_normal(s).astype(dtype), rng.standard_normal(s).astype(dtype),
                 rng.standard_normal(s).astype(dtype),
                 np.abs(rng.standard_normal(s)).astype(dtype)) for s in shapes]
        dev = [[backend.asarray(x.copy()) for x in arrays] for arrays in host]
        if strided:
            dev[5] = [_strided(backend, x) for x in host[5]]
        backend.adam_update_device_many([tuple(arrays) for arrays in dev], hyper)
        for (w, dw, m, v), config, (w_got, _, m_got, v_got) in zip(host, configs, dev):
            if w.size == 0:
                continue
            want = textbook.adam(*_f64(w, dw, m, v), config["t"] + 1, config["learning_rate"],
                                 0.8, 0.99, 1e-6)
            _close(backend, [w_got, m_got, v_got], want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_loss_weighs_each_row(backend, dtype):
    """Rows of any weight (0: not scored; negative: a self-critical advantage), against
    the softmax cross-entropy written out in float64."""
    rng = np.random.default_rng(11)
    M, H, V, n = 23, 6, 9, 5
    h, W, b = (rng.standard_normal(s).astype(dtype) for s in ((M, H), (H, V), (V,)))
    y = rng.integers(0, V, M)
    weight = (rng.standard_normal(M) * (rng.random(M) > 0.3)).astype(dtype)
    scores = h.astype(np.float64) @ W + b
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -(weight * np.log(probs[np.arange(M), y])).sum() / n
    dscores = probs
    dscores[np.arange(M), y] -= 1
    dscores *= weight[:, None] / n
    got = backend.vocab_loss(*(backend.asarray(a) for a in (h, W, b, y, weight)), n)
    _close(backend, [*got[:2], *got[2]()],
           [np.float64(loss), dscores @ W.T.astype(np.float64), h.T @ dscores,
            dscores.sum(axis=0)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [(4, 4, 3, 1, 1, 0), (2,), (0, 0), (5, 2)])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_packed_recurrences_match_each_sequence_alone(backend, cell, lengths, dtype):
    """Packed sequences (longest first, each step only those still running) against the
    textbook run on each sequence alone for its own length: the states, and the
    gradients of the input projections (the textbook's dx with Wx = I), h0 and Wh."""
    rng = np.random.default_rng(len(lengths) + sum(lengths))
    k, H, N = (4 if cell == "lstm" else 1), 5, len(lengths)
    step_rows = [sum(n > t for n in lengths) for t in range(max(lengths) + 1)]
    a = [rng.standard_normal((n, k * H)) for n in lengths]  # each sequence's projections
    dh = [rng.standard_normal((n, H)) for n in lengths]
    h0, Wh = rng.standard_normal((N, H)), rng.standard_normal((H, k * H))
    Wx, b = np.eye(k * H), np.zeros(k * H)
    pack = [(t, n) for t, rows in enumerate(step_rows) for n in range(rows)]
    packed_a = np.array([a[n][t] for t, n in pack]).reshape(-1, k * H).astype(dtype)
    packed_dh = np.array([dh[n][t] for t, n in pack]).reshape(-1, H).astype(dtype)

    forward, backward = (getattr(backend, f"{cell}_{way}_packed") for way in ("forward",
                                                                              "backward"))
    hs, cache = forward(backend.asarray(packed_a), backend.asarray(h0.astype(dtype)),
                        backend.asarray(Wh.astype(dtype)), step_rows)
    da, dh0, dWh = backward(backend.asarray(packed_dh), cache)

    want_hs, want_da = np.zeros((len(pack), H)), np.zeros((len(pack), k * H))
    want_dh0, want_dWh = np.zeros((N, H)), np.zeros((H, k * H))
    for n, length in enumerate(lengths):
        if length == 0:
            continue
        h, caches = getattr(textbook, f"{cell}_forward")(a[n][None], h0[n:n + 1], Wx, Wh, b)
        dx, want_dh0[n], _, dWh_n, _ = getattr(textbook, f"{cell}_backward")(dh[n][None],
                                                                            caches)
        want_dWh += dWh_n
        for row, (t, m) in enumerate(pack):
            if m == n:
                want_hs[row], want_da[row] = h[0, t], dx[0, t]
    assert hs.shape == want_hs.shape and da.shape == want_da.shape
    got, want = [hs, da, dh0, dWh], [want_hs, want_da, want_dh0, want_dWh]
    if not pack:  # nothing runs: no states, and zero gradients
        got, want = got[2:], want[2:]
        assert not np.any(backend.to_numpy(dWh)) and not np.any(backend.to_numpy(dh0))
    _close(backend, got, want, dtype)


def test_packed_steps_refuse_counts_that_do_not_pack(backend):
    from backend.base import packed_steps

    assert packed_steps([3, 3, 1, 0], 7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    for rows, packed, batch in (([2, 3], 5, 3), ([4], 4, 3), ([2, 1], 4, 3), ([-1], -1, 3)):
        with pytest.raises(ValueError, match="do not pack"):
            packed_steps(rows, packed, batch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("rows", "words"), [(37, 1004), (9, 5), (8, 33), (1, 64)])
def test_argmax_rows_of_biased_scores_is_numpys_argmax(backend, dtype, rows, words):
    """Greedy decoding's choice: ties go to the first column, a NaN to the first NaN,
    a row of -inf to column 0, as in ``argmax``; a strided view of scores too."""
    rng = np.random.default_rng(rows * words)
    scores = rng.standard_normal((rows, words)).astype(dtype)
    bias = rng.standard_normal(words).astype(dtype)
    scores[0, words // 2] = scores[0, words - 1] = 50  # a tie: the first column wins
    bias[words // 2] = bias[words - 1] = 0
    if rows > 2:
        scores[1] = -np.inf
        scores[2, [words - 1, words // 3]] = np.nan  # the first NaN wins
    want = (scores + bias).argmax(axis=1)
    wide = np.concatenate([scores, scores], axis=1)
    got = backend.argmax_rows(backend.asarray(scores.copy()), backend.asarray(bias))
    np.testing.assert_array_equal(backend.to_numpy(got), want)  # (it may overwrite scores)
    assert got.dtype == np.int64
    got = backend.argmax_rows(backend.asarray(wide)[:, :words], backend.asarray(bias))
    np.testing.assert_array_equal(backend.to_numpy(got), want)
