"""``captioning caption``: every row of a features file, in order, in chunks, with flat
memory, as JSON lines or the COCO results list."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from captioning import CaptioningRNN
from captioning.checkpoint import save_model
from captioning.cli import main
from captioning.data.vocab import decode_captions
from captioning.decoding import beam_decode
from captioning.metrics import strip_special
from conftest import VOCAB

WORD_TO_IDX = {w: i for i, w in enumerate(VOCAB)}


@pytest.fixture
def model_file(tmp_path):
    model = CaptioningRNN(WORD_TO_IDX, input_dim=12, wordvec_dim=6, hidden_dim=10,
                          cell_type="lstm", seed=3)
    return model, save_model(tmp_path / "model.npz", model)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_in_order_whatever_the_chunk(model_file, tmp_path, capsys):
    model, checkpoint = model_file
    features = np.random.default_rng(0).standard_normal((23, 12)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["features"] = features
        f["image_ids"] = np.arange(100, 123)
    runs = {}
    for chunk in (5, 1000):
        out = tmp_path / f"c{chunk}.jsonl"
        assert main(["caption", "--checkpoint", str(checkpoint), "--features",
                     str(tmp_path / "f.h5"), "--out", str(out), "--chunk", str(chunk),
                     "--beam", "2", "--backend", "numpy"]) == 0
        assert f"captioned 23 rows of {tmp_path / 'f.h5'}" in capsys.readouterr().out
        runs[chunk] = out.read_text()
    assert runs[5] == runs[1000]
    records = _lines(tmp_path / "c5.jsonl")
    assert [r["image_id"] for r in records] == list(range(100, 123))
    captions, logp = beam_decode(model, features, beam_size=2, max_length=16)
    texts = [strip_special(t) for t in decode_captions(captions, VOCAB)]
    assert [r["caption"] for r in records] == texts
    np.testing.assert_allclose([r["logp"] for r in records], logp, atol=1e-6)


def test_npy_with_or_without_ids_and_the_coco_format(model_file, tmp_path, capsys):
    _, checkpoint = model_file
    np.save(tmp_path / "f.npy", np.random.default_rng(1).random((7, 12)).astype(np.float32))
    coco = tmp_path / "results.json"
    assert main(["caption", "--checkpoint", str(checkpoint), "--features",
                 str(tmp_path / "f.npy"), "--out", str(coco), "--format", "coco"]) == 0
    results = json.loads(coco.read_text())
    assert [r["image_id"] for r in results] == list(range(7))  # no ids: row numbers
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str)
               for r in results)
    (tmp_path / "f_ids.txt").write_text("".join(f"{9000 + i}\n" for i in range(7)))
    lines = tmp_path / "lines.jsonl"
    assert main(["caption", "--checkpoint", str(checkpoint), "--features",
                 str(tmp_path / "f.npy"), "--out", str(lines)]) == 0
    records = _lines(lines)
    assert [r["image_id"] for r in records] == list(range(9000, 9007))
    assert [r["caption"] for r in records] == [r["caption"] for r in results]


def test_a_wrong_width_names_both_and_writes_nothing(model_file, tmp_path, capsys):
    _, checkpoint = model_file
    np.save(tmp_path / "f.npy", np.zeros((4, 5), np.float32))
    out = tmp_path / "out.jsonl"
    assert main(["caption", "--checkpoint", str(checkpoint), "--features",
                 str(tmp_path / "f.npy"), "--out", str(out)]) == 1
    assert "holds 5-d features, but the model reads 12-d ones" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "model.npz"]


_MEASURE = textwrap.dedent("""
    import resource, sys
    from captioning.checkpoint import load_model
    from captioning.caption_files import caption_feature_file
    model = load_model(sys.argv[1], "numpy")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = caption_feature_file(model, sys.argv[2], sys.argv[3], chunk_rows=2048)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(rows, (after - before) / 1024)
""")


@pytest.mark.slow
def test_memory_stays_flat_however_many_rows(tmp_path):
    """100,000 rows of 512 features (205 MB): captioned in chunks, the process grows by a
    small fraction of the file (it would grow by all of it if the rows were read whole)."""
    model = CaptioningRNN(WORD_TO_IDX, input_dim=512, wordvec_dim=4, hidden_dim=8,
                          cell_type="lstm", seed=0)
    checkpoint = save_model(tmp_path / "model.npz", model)
    rows = 100_000
    with h5py.File(tmp_path / "big.h5", "w") as f:
        ds = f.create_dataset("features", (rows, 512), dtype=np.float32)
        rng = np.random.default_rng(0)
        for start in range(0, rows, 10_000):
            ds[start : start + 10_000] = rng.random((10_000, 512), dtype=np.float32)
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(checkpoint),
                             str(tmp_path / "big.h5"), str(tmp_path / "out.jsonl")],
                            capture_output=True, text=True, timeout=300, check=True)
    captioned, growth_mb = result.stdout.split()
    assert int(captioned) == rows
    assert float(growth_mb) < 60, growth_mb  # the file is 205 MB
    with open(tmp_path / "out.jsonl") as f:
        assert sum(1 for _ in f) == rows
