"""Malformed inputs of every kind, through the command line as a user meets them: each
exits non-zero with ``error:`` and the reason (no traceback), writes nothing, and leaves
every file it was given as it was. benchmarks/RESULTS.md counts the cases per kind."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from captioning.cli import main
from conftest import VOCAB, write_tiny_coco
from test_settings import CLI_REFUSALS


def _h5_delete(path, key):
    with h5py.File(path, "a") as f:
        del f[key]


def _h5_edit(path, key, fn):
    with h5py.File(path, "a") as f:
        value = f[key][()]
        del f[key]
        f[key] = fn(value)


def _vocab(root, content):
    (root / "coco2014_vocab.json").write_text(content if isinstance(content, str)
                                              else json.dumps(content))


CAPTIONS, TRAIN_PCA = "coco2014_captions.h5", "train2014_vgg16_fc7_pca.h5"

# name -> (how to break a healthy COCO-layout folder, what the error says)
DATASETS = {
    "no captions file": (lambda r: (r / CAPTIONS).unlink(), "missing file coco2014_captions"),
    "no features file": (lambda r: (r / TRAIN_PCA).unlink(), "missing file train2014_vgg16"),
    "no urls file": (lambda r: (r / "val2014_urls.txt").unlink(), "missing file val2014_urls"),
    "captions not HDF5": (lambda r: (r / CAPTIONS).write_bytes(b"not hdf5 at all"),
                          "coco2014_captions.h5: not a readable HDF5 file"),
    "features truncated": (lambda r: (r / TRAIN_PCA).write_bytes(
        (r / TRAIN_PCA).read_bytes()[:700]), "train2014_vgg16_fc7_pca.h5: not a readable"),
    "no train_captions key": (lambda r: _h5_delete(r / CAPTIONS, "train_captions"),
                              "missing HDF5 key 'train_captions'"),
    "float captions": (lambda r: _h5_edit(r / CAPTIONS, "train_captions",
                                          lambda v: v.astype(np.float32)),
                       "expected a 2-D integer array"),
    "index count differs": (lambda r: _h5_edit(r / CAPTIONS, "train_image_idxs",
                                               lambda v: v[:-1]),
                            "one image index per caption"),
    "index beyond features": (lambda r: _h5_edit(r / CAPTIONS, "val_image_idxs",
                                                 lambda v: v + 100),
                              "expected indices 0..3"),
    "word outside vocabulary": (lambda r: _h5_edit(r / CAPTIONS, "train_captions",
                                                   lambda v: v + 100),
                                "outside the vocabulary"),
    "NaN features": (lambda r: _h5_edit(r / TRAIN_PCA, "features",
                                        lambda v: np.where(v > 0.5, np.nan, v)),
                     "holds NaN or infinite values"),
    "1-D features": (lambda r: _h5_edit(r / TRAIN_PCA, "features", lambda v: v.ravel()),
                     "expected a 2-D float array"),
    "no features key": (lambda r: _h5_delete(r / TRAIN_PCA, "features"),
                        "no dataset 'features'"),
    "too few urls": (lambda r: (r / "val2014_urls.txt").write_text("http://one\n"),
                     "one URL per image"),
}
VOCABULARIES = {
    "not JSON": (lambda r: _vocab(r, "{idx_to_word: [}"), "coco2014_vocab.json: not valid JSON"),
    "a list": (lambda r: _vocab(r, VOCAB), "expected a JSON object with idx_to_word"),
    "no idx_to_word": (lambda r: _vocab(r, {"word_to_idx": {w: i for i, w in enumerate(VOCAB)}}),
                       "key 'idx_to_word' missing or not a list"),
    "word_to_idx a list": (lambda r: _vocab(r, {"idx_to_word": VOCAB, "word_to_idx": VOCAB}),
                           "key 'word_to_idx' missing or not a dict"),
    "no <NULL>": (lambda r: _vocab(r, {"idx_to_word": ["<PAD>", *VOCAB[1:]], "word_to_idx": {
        w: i for i, w in enumerate(["<PAD>", *VOCAB[1:]])}}), "no '<NULL>' token"),
    "disagreeing maps": (lambda r: _vocab(r, {"idx_to_word": VOCAB, "word_to_idx": {
        w: (i + 1) % len(VOCAB) for i, w in enumerate(VOCAB)}}), "disagree"),
    "a word not a string": (lambda r: _vocab(r, {"idx_to_word": [*VOCAB, 7], "word_to_idx": {
        **{w: i for i, w in enumerate(VOCAB)}, "7": len(VOCAB)}}), "disagree"),
}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _refused(argv, capsys, message) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "error:" in err and "Traceback" not in err
    if message is not None:
        assert message in err


@pytest.mark.parametrize("case", [*DATASETS, *(f"vocabulary: {k}" for k in VOCABULARIES)])
def test_a_malformed_dataset_is_refused_and_left_alone(case, tmp_path, capsys):
    root = write_tiny_coco(tmp_path / "coco")
    name = case.removeprefix("vocabulary: ")
    corrupt, message = (VOCABULARIES if case.startswith("vocabulary: ") else DATASETS)[name]
    corrupt(root)
    before = _tree_digest(tmp_path)
    _refused(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--features",
              "pca", "--epochs", "1", "--no-report"], capsys, message)
    assert _tree_digest(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- checkpoints
def _rewrite(path: Path, edit) -> None:
    arrays = dict(np.load(path))
    edit(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _config(arrays, **changes):
    arrays["config"] = np.array(json.dumps({**json.loads(str(arrays["config"])), **changes}))


def _state(arrays, **changes):
    state = json.loads(str(arrays["state"]))
    arrays["state"] = np.array(json.dumps({k: v for k, v in {**state, **changes}.items()
                                           if v is not None}))


CHECKPOINTS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable checkpoint"),
    "not a zip": (lambda p: p.write_bytes(b"PK but not really"), "not a readable checkpoint"),
    "pickled object": (lambda p: _rewrite(p, lambda a: a.update(
        config=np.array([{"x": 1}], dtype=object))), "not a readable checkpoint"),
    "NaN parameter": (lambda p: _rewrite(p, lambda a: a["param/Wh"].__setitem__(
        (0, 0), np.nan)), "parameter Wh holds NaN or infinite values"),
    "integer parameter": (lambda p: _rewrite(p, lambda a: a.update(
        {"param/b": a["param/b"].astype(np.int64)})), "parameter b holds int64"),
    "wrong shape": (lambda p: _rewrite(p, lambda a: a.update({"param/Wh": np.zeros((3, 3))})),
                    "parameter Wh is of shape (3, 3)"),
    "missing parameter": (lambda p: _rewrite(p, lambda a: a.pop("param/W_vocab")),
                          "parameter W_vocab is missing"),
    "no config": (lambda p: _rewrite(p, lambda a: a.pop("config")), "checkpoint lacks"),
    "config not JSON": (lambda p: _rewrite(p, lambda a: a.update(config=np.array("{oops"))),
                        "not valid JSON"),
    "negative hidden size": (lambda p: _rewrite(p, lambda a: _config(a, hidden_dim=-8)),
                             "hidden_dim must be a positive integer"),
    "unknown cell": (lambda p: _rewrite(p, lambda a: _config(a, cell_type="gru")),
                     "invalid cell_type 'gru'"),
    "unknown format": (lambda p: _rewrite(p, lambda a: _config(a, format="v0")),
                       "unknown checkpoint format"),
    "duplicate words": (lambda p: _rewrite(p, lambda a: a["vocab_words"].__setitem__(5, "a")),
                        "distinct words"),
}
RESUMES = {
    "state without epoch": (lambda p: _rewrite(p, lambda a: _state(a, epoch=None)),
                            "training state lacks or garbles ['epoch']"),
    "state with a text iteration": (lambda p: _rewrite(p, lambda a: _state(a, iteration="3")),
                                    "['iteration']"),
    "state of other parameters": (lambda p: _rewrite(p, lambda a: _state(a, optim={})),
                                  "['optim']"),
    "run.json not JSON": (lambda p: (p.parent / "run.json").write_text("{"),
                          "run.json: not valid JSON"),
    "run.json a list": (lambda p: (p.parent / "run.json").write_text("[]"),
                        "expected a JSON object of settings"),
}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    """A tiny dataset and a finished run on it, made once."""
    root = tmp_path_factory.mktemp("healthy")
    data = write_tiny_coco(root / "coco")
    assert main(["train", "--data", str(data), "--out", str(root / "run"), "--cell", "rnn",
                 "--hidden", "8", "--wordvec", "4", "--batch-size", "4", "--epochs", "1",
                 "--features", "pca", "--metrics-every", "0", "--no-report",
                 "--samples", "0"]) == 0
    return data, root / "run"


def _copy_run(healthy_run, tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for p in healthy_run[1].iterdir():
        if p.is_file() and p.name != ".lock":
            (run / p.name).write_bytes(p.read_bytes())
    return run


@pytest.mark.parametrize("case", [*CHECKPOINTS, *(f"resume: {k}" for k in RESUMES)])
def test_a_malformed_checkpoint_is_refused_and_left_alone(case, healthy_run, tmp_path, capsys):
    data, _ = healthy_run
    run = _copy_run(healthy_run, tmp_path)
    name = case.removeprefix("resume: ")
    corrupt, message = (RESUMES if case.startswith("resume: ") else CHECKPOINTS)[name]
    corrupt(run / "checkpoint.npz")
    before = _tree_digest(tmp_path)
    if case.startswith("resume: "):
        argv = ["train", "--resume", str(run), "--epochs", "2", "--no-report"]
    else:
        argv = ["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--data", str(data),
                "--no-meteor", "--json", str(tmp_path / "metrics.json")]
    _refused(argv, capsys, message)
    assert _tree_digest(tmp_path) == before


def test_the_healthy_run_and_dataset_pass_the_same_commands(healthy_run, tmp_path, capsys):
    """The refusals above are about the damage, not about the commands."""
    data, _ = healthy_run
    run = _copy_run(healthy_run, tmp_path)
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--data", str(data),
                 "--no-meteor", "--json", str(tmp_path / "metrics.json")]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-report"]) == 0
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "new"), "--features",
                 "pca", "--epochs", "1", "--no-report", "--hidden", "8", "--wordvec", "4",
                 "--metrics-every", "0", "--samples", "0"]) == 0


# ---------------------------------------------------------------- annotations
def _karpathy(root: Path, sentences=None, entry=None) -> list[str]:
    images = [{"cocoid": i, "split": split, "sentences": [{"tokens": ["a", word]}]}
              for i, (split, word) in enumerate([("train", "cat"), ("train", "dog"),
                                                 ("val", "cat")])]
    if sentences is not None:
        images[1]["sentences"] = sentences
    if entry is not None:
        images[2] = entry
    (root / "k.json").write_text(json.dumps({"images": images}))
    return ["--karpathy", str(root / "k.json")]


def _coco(root: Path, caption="a cat", image_id=0, top=None) -> list[str]:
    for split in ("train", "val"):
        content = top if top is not None else {
            "images": [{"id": 0, "file_name": "0.jpg"}, {"id": 1, "file_name": "1.jpg"}],
            "annotations": [{"image_id": image_id, "caption": caption},
                            {"image_id": 1, "caption": "a dog"}]}
        (root / f"{split}.json").write_text(content if isinstance(content, str)
                                            else json.dumps(content))
    return ["--coco-train", str(root / "train.json"), "--coco-val", str(root / "val.json")]


ANNOTATIONS = {
    "caption a number": (lambda r: _coco(r, caption=42),
                         "the caption of image 0 is 42 (int); expected a string"),
    "caption null": (lambda r: _coco(r, caption=None), "is None (NoneType); expected a string"),
    "image id not a number": (lambda r: _coco(r, image_id="zero"),
                              "an annotation's image_id is 'zero'; expected an integer"),
    "no images list": (lambda r: _coco(r, top={"annotations": []}),
                       "expected a JSON object with an 'images' list"),
    "not JSON": (lambda r: _coco(r, top="{"), "train.json: not valid JSON"),
    "tokens not a list": (lambda r: _karpathy(r, sentences=[{"tokens": "a dog"}]),
                          "expected a list of strings"),
    "a token a number": (lambda r: _karpathy(r, sentences=[{"tokens": ["a", 3]}]),
                         "a token of a sentence of image 1 is 3 (int)"),
    "raw text a list": (lambda r: _karpathy(r, sentences=[{"raw": ["a", "dog"]}]),
                        "the raw text of a sentence of image 1"),
    "entry not an object": (lambda r: _karpathy(r, entry="val/2.jpg"),
                            "an entry of 'images' is 'val/2.jpg'"),
    "no annotations given": (lambda r: [], "annotations missing"),
}


@pytest.mark.parametrize("case", list(ANNOTATIONS))
def test_malformed_annotations_are_refused_and_left_alone(case, tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.eye(3, dtype=np.float32))
    (tmp_path / "f_ids.txt").write_text("0\n1\n2\n")
    make, message = ANNOTATIONS[case]
    given = make(tmp_path)
    before = _tree_digest(tmp_path)
    _refused(["data", "build", "--out", str(tmp_path / "out"), "--features",
              str(tmp_path / "f.npy"), "--min-count", "1", "--pca-dim", "2", *given],
             capsys, message)
    assert _tree_digest(tmp_path) == before and not (tmp_path / "out").exists()


def test_the_healthy_annotations_build(tmp_path):
    np.save(tmp_path / "f.npy", np.eye(3, dtype=np.float32))
    (tmp_path / "f_ids.txt").write_text("0\n1\n2\n")
    for given in (_coco(tmp_path), _karpathy(tmp_path)):
        assert main(["data", "build", "--out", str(tmp_path / "out"), "--features",
                     str(tmp_path / "f.npy"), "--min-count", "1", "--pca-dim", "2",
                     *given]) == 0


KINDS = {"dataset files": len(DATASETS), "vocabulary": len(VOCABULARIES),
         "checkpoints": len(CHECKPOINTS) + len(RESUMES), "annotations": len(ANNOTATIONS),
         "settings": len(CLI_REFUSALS)}


def test_the_results_table_counts_these_cases():
    table = (Path(__file__).parent.parent / "benchmarks" / "RESULTS.md").read_text()
    for kind, count in KINDS.items():
        assert f"| {kind} | {count} |" in table, (kind, count)
