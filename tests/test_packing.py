"""Packed batches: scored lengths, the sort and step counts, a recording's capacity, and
the model and the training step computing only the scored positions."""

import copy

import numpy as np
import pytest

from backend import available_backends, get_backend
from backend.base import packed_steps
from benchmarks import textbook
from captioning import CaptioningRNN, CaptioningTrainer
from captioning.packing import (
    ROW_QUANTUM,
    Packing,
    capacity,
    covers,
    longest_first,
    scored_lengths,
    step_rows_of,
)
from conftest import replaying_backend

NULL = 0
WORDS = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{i}": i for i in range(3, 12)}}


def _odd_captions() -> np.ndarray:
    """Unsorted, with padding, a <NULL> inside a caption, and a caption of no scored
    target (scored lengths 3, 6, 0, 5, 1, 6)."""
    return np.array([
        [1, 5, 6, 2, 0, 0, 0],
        [1, 4, 4, 4, 4, 4, 2],
        [1, 0, 0, 0, 0, 0, 0],
        [1, 7, 0, 8, 9, 2, 0],   # a <NULL> target at position 1, then words again
        [1, 2, 0, 0, 0, 0, 0],
        [1, 3, 5, 7, 9, 11, 2],
    ])


def test_scored_lengths_end_at_the_last_word_that_is_not_null():
    assert scored_lengths(_odd_captions(), NULL).tolist() == [3, 6, 0, 5, 1, 6]


def test_longest_first_sorts_stably_and_counts_the_captions_still_scored():
    order, step_rows = longest_first(np.array([3, 6, 0, 5, 1, 6]), 6)
    assert order.tolist() == [1, 5, 3, 0, 4, 2]
    assert step_rows == (5, 4, 4, 3, 3, 2)
    assert step_rows_of(np.array([0, 0]), 3) == (0, 0, 0)


def test_capacity_covers_a_random_batch_in_whole_quanta():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 17, 5000)
    rows = capacity(lengths, 1024, 16)
    exact = step_rows_of(lengths, 16)
    expected = [1024 * n / len(lengths) for n in exact]
    assert all(r % ROW_QUANTUM == 0 or r == 1024 for r in rows)
    assert all(e < r <= 1024 for e, r in zip(expected, rows))
    assert list(rows) == sorted(rows, reverse=True)  # a packing: non-increasing
    # Draws of random batches almost never go past it.
    for _ in range(200):
        assert covers(rows, step_rows_of(lengths[rng.integers(0, len(lengths), 1024)], 16))
    grown = capacity(lengths, 1024, 16, at_least=(1024,) * 16)
    assert grown == (1024,) * 16 and not covers(rows, grown)
    assert capacity(np.array([2, 2, 1]), 64, 4)[2:] == (0, 0)  # no caption reaches them


def test_a_packing_points_each_row_at_its_word_its_target_and_the_state_before():
    """Packed row p, caption n at step t: its word at captions[n, t], its target at
    captions[n, t + 1], and the state before it h0[n] at t = 0 (written -1 - n), else
    the packed row of caption n at step t - 1."""
    step_rows, T = (5, 4, 4, 3, 3, 2), 6
    packing = Packing.of(step_rows, get_backend("numpy"))
    row_of = {}  # (t, n) -> packed row, counted out step by step
    for t, count in enumerate(step_rows):
        for n in range(count):
            row_of[t, n] = len(row_of)
    assert packing.caption.tolist() == [n for t, n in row_of]
    assert packing.positions.tolist() == [n * (T + 1) + t for t, n in row_of]
    assert packing.target_positions.tolist() == [n * (T + 1) + t + 1 for t, n in row_of]
    assert packing.layout.previous.tolist() == [row_of[t - 1, n] if t else -1 - n
                                                for t, n in row_of]
    assert packing.layout.starts.tolist() == [0, 5, 9, 13, 16, 19, 21]


@pytest.mark.parametrize(("dtype", "H"), [(np.float32, 6), (np.float64, 5), (np.uint16, 6),
                                          (np.uint16, 7)])
def test_the_gpu_gathers_the_previous_states_the_copies_by_runs_give(cupy_backend, dtype, H):
    """Backend.previous_states with a packing's layout: the CuPy backend gathers
    every row in one kernel (of 4-byte words: float32, float64, and bfloat16 bits of an
    even width; 7 bfloat16 values a row take the copies), bit for bit what NumPy's
    copies by runs of equal row counts make; h0 holds more rows than the first step."""
    import cuda_on_cpu

    rng = np.random.default_rng(4)
    step_rows, N = (9, 9, 9, 6, 6, 2, 1), 11
    P = sum(step_rows)
    h0, hs = (rng.integers(0, 2**16, (rows, H)).astype(dtype) if dtype == np.uint16
              else rng.standard_normal((rows, H)).astype(dtype) for rows in (N, P))
    steps = packed_steps(step_rows, P, N)
    want = get_backend("numpy").previous_states(h0, hs, steps)
    cuda_on_cpu.launches.clear()
    got = cupy_backend.previous_states(cupy_backend.asarray(h0), cupy_backend.asarray(hs),
                                       steps, Packing.of(step_rows, cupy_backend).layout)
    np.testing.assert_array_equal(cupy_backend.to_numpy(got), want)
    on_cpu = cupy_backend.xp.__version__ == "stand-in"
    assert not on_cpu or cuda_on_cpu.launches["previous_states"] == (H * hs.itemsize % 4 == 0)


def _model(backend, dtype=np.float64, cell="lstm"):
    rng = np.random.default_rng(5)
    model = CaptioningRNN(WORDS, input_dim=8, wordvec_dim=5, hidden_dim=6, cell_type=cell,
                          dtype=dtype, seed=2, backend=backend)
    for name in ("b", "b_proj", "b_vocab"):  # initialised to zero: make them count
        model.params[name] = model.backend.asarray(
            rng.standard_normal(model.params[name].shape).astype(dtype))
    return model


def test_an_odd_batch_matches_the_textbook_model(backend):
    """Unsorted, padded, a <NULL> inside a caption, a caption with nothing scored."""
    captions = _odd_captions()
    features = np.random.default_rng(1).standard_normal((len(captions), 8))
    model = _model(backend)
    loss, grads = model.loss(features, captions)
    want_loss, want_grads = textbook.TextbookLSTM(
        {k: backend.to_numpy(v) for k, v in model.params.items()}).loss(features, captions)
    assert float(loss) == pytest.approx(want_loss, rel=1e-10)
    for name, want in want_grads.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_computing_more_rows_than_are_scored_changes_nothing(backend, cell):
    """A recording's packing computes a fixed number of rows per step, past the end of
    some captions: their positions add exactly nothing."""
    captions = _odd_captions()
    order, step_rows = longest_first(scored_lengths(captions, NULL), 6)
    captions = captions[order]
    features = np.random.default_rng(1).standard_normal((len(captions), 8))
    model = _model(backend, cell=cell)
    exact = model.loss(features, captions)
    roomy = model.loss(features, captions, packing=Packing.of((6, 6, 5, 5, 4, 4),
                                                              model.backend))
    assert step_rows == (5, 4, 4, 3, 3, 2)
    assert float(roomy[0]) == pytest.approx(float(exact[0]), rel=1e-12)
    for name, value in exact[1].items():
        np.testing.assert_allclose(roomy[1][name], value, rtol=1e-10, atol=1e-14,
                                   err_msg=name)
    with pytest.raises(ValueError, match="does not fit 6 captions of 6 steps"):
        model.loss(features, captions, packing=Packing.of((7, 6, 5, 5, 4, 4), model.backend))
    with pytest.raises(ValueError, match="does not fit"):
        model.loss(features, captions, packing=Packing.of((6, 6, 5), model.backend))


def test_caption_weights_follow_their_captions_through_the_sort(backend):
    """loss(batch, w) = sum of w_n loss(caption n alone) / N, and so the gradients."""
    captions = _odd_captions()
    features = np.random.default_rng(1).standard_normal((len(captions), 8))
    weights = np.array([0.5, -2.0, 3.0, 1.5, -0.25, 4.0])
    model = _model(backend)
    loss, grads = model.loss(features, captions, caption_weights=weights)
    alone = [model.loss(features[n:n + 1], captions[n:n + 1]) for n in range(len(captions))]
    N = len(captions)
    assert float(loss) == pytest.approx(sum(w * float(a[0]) for w, a in zip(weights, alone))
                                        / N, rel=1e-10)
    for name, value in grads.items():
        want = sum(w * a[1][name] for w, a in zip(weights, alone)) / N
        np.testing.assert_allclose(value, want, rtol=1e-8, atol=1e-12, err_msg=name)


def _skewed_data(rng, count=400):
    """Nine in ten captions score 2 words, the rest 10: a random batch's late steps have
    few captions, and a hand-picked batch can have many."""
    captions = np.zeros((count, 11), dtype=np.int32)
    captions[:, 0] = 1
    long = rng.random(count) < 0.1
    for row, is_long in zip(captions, long):
        n = 9 if is_long else 1
        row[1:n + 1] = rng.integers(3, 12, n)
        row[n + 1] = 2
    return {"word_to_idx": WORDS, "train_captions": captions,
            "train_image_idxs": rng.integers(0, 50, count).astype(np.int32),
            "train_features": rng.standard_normal((50, 8))}, np.flatnonzero(long)


@pytest.mark.parametrize("recorder", [
    "stand-in", pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not available_backends()["cupy"].available, reason="cupy unavailable here")])])
def test_a_batch_past_the_recordings_capacity_is_recorded_anew_and_trains_alike(recorder):
    """Through the CPU's stand-in recorder, and through real CUDA graphs on a GPU."""
    rng = np.random.default_rng(3)
    data, long = _skewed_data(rng)
    batches = [rng.integers(0, 400, 64) for _ in range(4)]
    assert len(long) > 30
    # 30 long captions: far more than a random batch has.
    batches.insert(3, np.concatenate([long[:30], rng.integers(0, 400, 34)]))
    recording = replaying_backend() if recorder == "stand-in" else get_backend("cupy")
    runs = {}
    for name, be, graph in (("op by op", recording, False), ("recorded", recording, True)):
        model = CaptioningRNN(WORDS, input_dim=8, wordvec_dim=5, hidden_dim=6,
                              cell_type="lstm", dtype=np.float64, seed=2, backend=be)
        trainer = CaptioningTrainer(model, data, batch_size=64, verbose=False,
                                    optim_config={"learning_rate": 1e-2}, cuda_graph=graph)
        graphs = []
        for batch in batches:
            trainer.step(batch)
            graphs.append(trainer.training_step.graph)
        runs[name] = trainer
    trainer = runs["recorded"]
    # Step 1 runs op by op (Adam's buffers), 2 is recorded; the fourth batch does not
    # fit that recording and is recorded anew, with room for it, which the fifth fits.
    assert graphs[0] is None and graphs[1] is graphs[2] and graphs[3] is graphs[4]
    assert graphs[2] is not graphs[3]
    rows = graphs[3].packing.step_rows
    assert covers(rows, trainer.training_step.data.longest_first(batches[3])[1])
    assert not covers(graphs[2].packing.step_rows,
                      trainer.training_step.data.longest_first(batches[3])[1])
    assert rows[-1] < 64  # still packed: not every caption at every step
    plain = runs["op by op"]
    assert plain.training_step.graph is None
    np.testing.assert_allclose(trainer.losses(), plain.losses(), rtol=1e-10)
    for name, value in plain.model.params.items():
        np.testing.assert_allclose(plain.model.backend.to_numpy(trainer.model.params[name]),
                                   plain.model.backend.to_numpy(value), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_recurrence_looks_its_inputs_up_in_a_table_as_if_given_them(backend, cell,
                                                                        dtype):
    """forward(table, ..., words) computes what forward(table[words], ...) does (the
    lookup fused into the gates where a backend can), leaves the table as it was, and
    its cache takes the backward pass alike; H=24 is not a multiple of a warp."""
    rng = np.random.default_rng(7)
    step_rows, N, H = (5, 5, 4, 2, 1), 5, 24
    k = 4 if cell == "lstm" else 1
    words = rng.integers(0, 9, sum(step_rows))
    words[:N] = 1  # the <START> rows: one table row read by every caption at once
    table, h0, Wh = (backend.asarray(rng.standard_normal(shape).astype(dtype))
                     for shape in ((9, k * H), (N, H), (H, k * H)))
    forward, backward = ((backend.lstm_forward_packed, backend.lstm_backward_packed)
                         if cell == "lstm" else
                         (backend.rnn_forward_packed, backend.rnn_backward_packed))
    kept = backend.to_numpy(table).copy()
    looked_up, cache = forward(table, h0, Wh, step_rows, backend.asarray(words))
    given, given_cache = forward(table[backend.asarray(words)], h0, Wh, step_rows)
    np.testing.assert_array_equal(backend.to_numpy(table), kept)
    np.testing.assert_array_equal(backend.to_numpy(looked_up), backend.to_numpy(given))
    dh = backend.asarray(rng.standard_normal((len(words), H)).astype(dtype))
    for got, want in zip(backward(dh, cache), backward(dh, given_cache)):
        np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gates_of_looked_up_rows_are_those_of_the_rows_given(backend, dtype):
    """lstm_gates_forward_lookup(table, words, ...) as lstm_gates_forward_sum on
    table[words]; a table that is a strided view too (a backend's other layouts)."""
    rng = np.random.default_rng(8)
    N, H = 6, 24
    wide = rng.standard_normal((9, 8 * H)).astype(dtype)
    words = backend.asarray(rng.integers(0, 9, N).astype(np.int64))
    extra, prev_c = (rng.standard_normal(shape).astype(dtype) for shape in ((N, 4 * H), (N, H)))
    want = [backend.xp.zeros((N, 4 * H), dtype)] + [backend.xp.zeros((N, H), dtype)
                                                    for _ in range(3)]
    given = backend.asarray(wide[:, : 4 * H])[words]
    backend.lstm_gates_forward_sum(given, backend.asarray(extra), backend.asarray(prev_c),
                                   *want[1:])
    want[0] = given
    for table in (backend.asarray(np.ascontiguousarray(wide[:, : 4 * H])),
                  backend.asarray(wide)[:, : 4 * H]):
        got = [backend.xp.zeros_like(w) for w in want]
        backend.lstm_gates_forward_lookup(table, words, backend.asarray(extra),
                                          backend.asarray(prev_c), *got)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))


def _packed_lstm(be, N, H, lookup, dtype=np.float32, layout=False):
    """The packed LSTM's forward and backward on ``be`` over steps of N, N, N-3, N//2, 7
    and 1 rows (fixed random inputs), given their PackedRows where ``layout`` -> hs,
    da, dh0, dWh on the host."""
    rng = np.random.default_rng(13)
    step_rows = (N, N, N - 3, N // 2, 7, 1)
    P, V = sum(step_rows), 11
    words = rng.integers(0, V, P)
    table = rng.standard_normal((V if lookup else P, 4 * H)).astype(dtype)
    h0, Wh = (rng.standard_normal(s).astype(dtype) / 3 for s in ((N, H), (H, 4 * H)))
    dh = rng.standard_normal((P, H)).astype(dtype)
    hs, cache = be.lstm_forward_packed(be.asarray(table), be.asarray(h0), be.asarray(Wh),
                                       step_rows, be.asarray(words) if lookup else None,
                                       Packing.of(step_rows, be).layout if layout else None)
    grads = be.lstm_backward_packed(be.asarray(dh), cache)
    return [be.to_numpy(x) for x in (hs, *grads)]


@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize(("N", "H"), [(70, 512), (300, 24)])
def test_the_gpu_steps_split_or_not_follow_numpy(cupy_backend, lookup, N, H):
    """The LSTM's packed loops on the CuPy backend against NumPy's, in float32: steps of
    at most 70 rows of 512 units take their recurrent products in parts along K, which
    the gate kernels add (on a GPU of 132 multiprocessors); 300 rows of 24 do not."""
    want = _packed_lstm(get_backend("numpy"), N, H, lookup)
    for got, expected in zip(_packed_lstm(cupy_backend, N, H, lookup), want):
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("lookup", [False, True])
def test_the_gpu_backward_makes_tanh_c_again_as_the_forward_made_it(cupy_backend, lookup,
                                                                   precision):
    """The CuPy backend keeps no tanh(c) for the backward (``keeps_tanh_c``): its
    backward gate kernel makes it again from c, bit for bit what keeping it gives."""
    be = cupy_backend.with_precision(precision)
    assert not be.keeps_tanh_c
    keeping = copy.copy(be)
    keeping.keeps_tanh_c = True
    for got, want in zip(_packed_lstm(be, 37, 24, lookup), _packed_lstm(keeping, 37, 24, lookup)):
        np.testing.assert_array_equal(got, want)


def test_small_float32_steps_split_their_products_to_fill_the_gpu():
    """On a GPU of 132 multiprocessors, a step of at most 70 rows and 512 units (64 x 64
    output tiles: 2 x 32 forward, 2 x 8 backward) multiplies in 2 parts of K = 512
    forward and 8 of K = 2,048 backward (each part 256 deep at least), one cuBLAS call
    each; the last product (dh0) and every TF32 product whole."""
    import cupy_stand_in

    with cupy_stand_in.cupy_backend_on_cpu() as backend:
        cupy_stand_in.cublas.batch_counts.clear()
        _packed_lstm(backend, 70, 512, lookup=True)
        assert cupy_stand_in.cublas.batch_counts == [2] * 6 + [8] * 5
        cupy_stand_in.cublas.batch_counts.clear()
        _packed_lstm(backend.with_precision("tf32"), 70, 512, lookup=True)
        assert cupy_stand_in.cublas.batch_counts == []


@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize(("N", "H"), [(40, 32), (70, 96), (128, 512)])
def test_a_small_float32_batch_takes_its_steps_in_one_persistent_kernel_each_way(
        cupy_backend, lookup, N, H):
    """Given its PackedRows, a float32 batch of at most 32 rows a multiprocessor runs the
    LSTM's forward steps in one cooperative launch and its backward steps in another:
    what a product and a gate kernel a step give, each way, to float32's
    rounding of sums in another order. 128 x 512 is the size the step benchmarks (on
    the CPU, 16,384 threads run at once as fibers)."""
    import cuda_on_cpu

    on_cpu = cupy_backend.xp.__version__ == "stand-in"
    per_step = copy.copy(cupy_backend)
    per_step.persistent_steps = False
    want = _packed_lstm(per_step, N, H, lookup, layout=True)
    cuda_on_cpu.launches.clear()
    got = _packed_lstm(cupy_backend, N, H, lookup, layout=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    if on_cpu:
        assert cuda_on_cpu.launches["lstm_persistent_forward"] == 1
        assert cuda_on_cpu.launches["lstm_persistent_backward"] == 1
        assert not cuda_on_cpu.launches["lstm_forward<float>"]
        assert not cuda_on_cpu.launches["lstm_backward<float>"]


def test_work_beside_finishes_before_the_persistent_backward_and_not_the_per_step_one():
    """The persistent backward takes all but a few multiprocessors, so the work put
    ``beside`` before it (in a step, the vocabulary layer's weight gradients) is waited
    for first; a product and a gate kernel a step run beside that work, as before. (The
    stand-in runs every call when issued: its streams' waits are all there is to see.)"""
    import cupy_stand_in

    with cupy_stand_in.cupy_backend_on_cpu() as backend:
        for persistent in (True, False):
            be = copy.copy(backend)
            be.persistent_steps = persistent
            be.beside(lambda xp=be.xp: xp.zeros(3))()  # joined at once: nothing to wait for
            cupy_stand_in.waits.clear()
            _packed_lstm(be, 40, 32, lookup=True, layout=True)
            assert not cupy_stand_in.waits
            join = be.beside(lambda xp=be.xp: xp.zeros(3))
            cupy_stand_in.waits.clear()
            _packed_lstm(be, 40, 32, lookup=True, layout=True)
            on_side = [e for stream, e in cupy_stand_in.waits if e.stream is not stream]
            assert len(on_side) == persistent, persistent
            join()


def test_the_persistent_kernels_take_only_the_shared_memory_the_gpu_has(monkeypatch):
    """On a GPU that gives a block 99 KiB of shared memory (an RTX 4090, where an H100
    gives 227), 320 hidden units' slices of Wh fit the persistent forward's block but not
    the backward's: the backward takes a product and a gate kernel a step, and both
    agree with NumPy's; at 512 units neither is launched (setting more shared memory
    than the GPU has would fail)."""
    import cuda_on_cpu
    import cupy_stand_in

    monkeypatch.setattr(cuda_on_cpu, "MOST_SHARED_BYTES", 99 * 1024)
    with cupy_stand_in.cupy_backend_on_cpu() as be:
        for H, persistent_forward in ((320, 1), (512, 0)):
            cuda_on_cpu.launches.clear()
            got = _packed_lstm(be, 40, H, lookup=True, layout=True)
            assert cuda_on_cpu.launches["lstm_persistent_forward"] == persistent_forward, H
            assert not cuda_on_cpu.launches["lstm_persistent_backward"], H
            assert cuda_on_cpu.launches["lstm_backward<float>"], H
            want = _packed_lstm(get_backend("numpy"), 40, H, lookup=True)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_the_persistent_forward_is_left_to_batches_and_precisions_it_serves():
    """Not taken without PackedRows, in float64, on the TF32 and bf16 twins, at a hidden
    size that is not a multiple of 32, or for more rows than 32 a multiprocessor (132
    on the stand-in's GPU): those take a product and a gate kernel a step."""
    import cuda_on_cpu
    import cupy_stand_in

    with cupy_stand_in.cupy_backend_on_cpu() as be:
        for backend, N, H, dtype, layout in [(be, 40, 32, np.float32, False),
                                             (be, 40, 32, np.float64, True),
                                             (be.with_precision("tf32"), 40, 32, np.float32, True),
                                             (be.with_precision("bf16"), 40, 32, np.float32, True),
                                             (be, 40, 24, np.float32, True),
                                             (be, 66 * 32 + 1, 32, np.float32, True)]:
            cuda_on_cpu.launches.clear()
            _packed_lstm(backend, N, H, lookup=True, dtype=dtype, layout=layout)
            assert not cuda_on_cpu.launches["lstm_persistent_forward"], (N, H, dtype)
            ctype = "float" if dtype == np.float32 else "double"
            assert cuda_on_cpu.launches[f"lstm_forward<{ctype}>"], (N, H, dtype)
