"""Making COCO-layout folders: the built-in shapes dataset, `data build` from caption
annotations, and PCA."""

import json

import h5py
import numpy as np
import pytest

from captioning import CaptioningRNN, CaptioningTrainer, load_coco_data
from captioning.data.annotations import build_dataset
from captioning.data.pca import fit_pca, pca_folder
from captioning.data.shapes import (
    CAPTIONS_PER_IMAGE,
    COLOURS,
    SHAPES,
    builtin_dataset_dir,
    write_shapes_dataset,
)
from captioning.data.vocab import build_vocab, decode_captions, encode_captions, tokenize
from captioning.evaluation import evaluate

# ----------------------------------------------------------------- the built-in dataset


def test_shapes_layout_is_exactly_the_coco_one(small_shapes):
    data = load_coco_data(small_shapes, pca_features=False)
    assert data["train_captions"].shape == (1200 * CAPTIONS_PER_IMAGE, 17)
    assert data["train_captions"].dtype == np.int32 and data["val_image_idxs"].dtype == np.int32
    assert data["idx_to_word"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert data["train_features"].shape == (1200, 4096)
    assert data["train_features"].min() >= 0  # fc7-like: after a ReLU
    assert load_coco_data(small_shapes)["val_features"].shape == (200, 512)
    for split in ("train", "val"):
        for url in data[f"{split}_urls"][:5]:
            assert (small_shapes / url).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shapes_captions_fit_and_use_only_known_words(small_shapes):
    data = load_coco_data(small_shapes)
    captions = data["train_captions"]
    assert (captions[:, 0] == 1).all()
    lengths = (captions != 0).sum(axis=1) - 2
    assert lengths.max() <= 15 and lengths.min() >= 3
    assert not (captions == 3).any()  # no <UNK> in the split the vocabulary came from
    words = set(data["idx_to_word"])
    assert set(SHAPES) <= words and set(COLOURS) <= words
    texts = decode_captions(captions[:50], data["idx_to_word"])
    assert len(set(texts)) > 40  # varied templates, not one sentence


def test_shapes_generation_is_deterministic_per_seed(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", train=30, val=10, seed=3)
    b = write_shapes_dataset(tmp_path / "b", train=30, val=10, seed=3)
    c = write_shapes_dataset(tmp_path / "c", train=30, val=10, seed=4)
    da, db, dc = (load_coco_data(p, pca_features=False) for p in (a, b, c))
    for key in ("train_captions", "val_captions", "train_features", "val_features"):
        np.testing.assert_array_equal(da[key], db[key])
    assert not np.array_equal(da["train_features"], dc["train_features"])
    png = "images/train/00007.png"
    assert (a / png).read_bytes() == (b / png).read_bytes()


def test_the_cache_is_built_once_and_rebuilt_when_the_generator_changes(tmp_path, monkeypatch):
    import captioning.data.shapes as shapes

    monkeypatch.setenv("CAPTION_CACHE", str(tmp_path))
    first = builtin_dataset_dir(20, 5)
    stamp = (first / "shapes.json").stat().st_mtime_ns
    assert builtin_dataset_dir(20, 5) == first
    assert (first / "shapes.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setattr(shapes, "generator_stamp", lambda: "changed-generator")
    second = builtin_dataset_dir(20, 5)
    assert second != first and (second / "shapes.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building")]


@pytest.mark.slow
def test_a_model_learns_from_the_features_and_shuffling_them_hurts(small_shapes):
    data = load_coco_data(small_shapes)
    model = CaptioningRNN(data["word_to_idx"], input_dim=512, wordvec_dim=64, hidden_dim=128,
                          cell_type="lstm", dtype=np.float32, seed=0)
    CaptioningTrainer(model, data, batch_size=100, num_epochs=8, verbose=False, seed=0,
                      updater_config={"learning_rate": 5e-3}).train()
    real = evaluate(model, data, beams=(1,), meteor=False)["greedy"]["BLEU-4"]
    data["val_features"] = data["val_features"][np.random.default_rng(0).permutation(200)]
    shuffled = evaluate(model, data, beams=(1,), meteor=False)["greedy"]["BLEU-4"]
    assert real > 0.3 and shuffled < real / 2


# ----------------------------------------------------------------- vocabulary


def test_tokenize_build_vocab_and_encode():
    assert tokenize("A man's Dog, running!  Fast.") == ["a", "mans", "dog", "running", "fast"]
    vocab = build_vocab([["b", "a", "b"], ["c", "b", "a"], ["d"]], min_count=2)
    assert vocab == ["<NULL>", "<START>", "<END>", "<UNK>", "b", "a"]
    word_to_idx = {w: i for i, w in enumerate(vocab)}
    rows, stats = encode_captions([["a", "x", "b", "b"], ["b"]], word_to_idx, max_length=3)
    np.testing.assert_array_equal(rows, [[1, 5, 3, 4, 2], [1, 4, 2, 0, 0]])
    assert (stats.truncated, stats.unknown, stats.words) == (1, 1, 4)
    with pytest.raises(ValueError, match="min_count"):
        build_vocab([], min_count=0)


# ----------------------------------------------------------------- data build


def _features_h5(path, ids, dim=6, seed=0):
    with h5py.File(path, "w") as f:
        f["features"] = np.random.default_rng(seed).random((len(ids), dim)).astype(np.float32)
        f["image_ids"] = np.asarray(ids)
    return path


def _coco_json(path, images, annotations):
    path.write_text(json.dumps({
        "images": [{"id": i, "coco_url": f"http://x/{i}.jpg"} for i in images],
        "annotations": [{"image_id": i, "caption": c} for i, c in annotations],
    }))
    return path


def test_build_from_coco_caption_files(tmp_path):
    long = " ".join(["word"] * 20)
    train = _coco_json(tmp_path / "captions_train.json", [1, 2, 3], [
        (1, "A red Circle."), (1, "a red ball"), (2, "Two dogs, running!"), (2, long),
        (3, "   "), (99, "an image nobody lists"),
    ])
    val = _coco_json(tmp_path / "captions_val.json", [10, 11], [
        (10, "a red zebra"), (11, "dogs running"),
    ])
    features = _features_h5(tmp_path / "f.h5", [1, 2, 3, 10])  # image 11 has none
    with pytest.raises(ValueError, match=r"1 val images have no features \(ids \[11\]"):
        build_dataset(tmp_path / "out", [features], coco_train=train, coco_val=val)
    report = build_dataset(tmp_path / "out", [features], coco_train=train, coco_val=val,
                           skip_missing=True, pca_dim=2)
    assert report.images == {"train": 2, "val": 1}  # image 3 has only an empty caption
    assert report.skipped["empty captions"] == 1
    assert report.skipped["captions of unknown image ids"] == 1
    assert report.skipped["val images without features"] == 1
    assert report.encode["train"].truncated == 1
    assert report.encode["val"].unknown == 1 and report.encode["val"].words == 3  # zebra
    data = load_coco_data(tmp_path / "out")
    assert data["train_features"].shape == (2, 2) and data["val_features"].shape == (1, 2)
    assert data["train_urls"][0] == "http://x/1.jpg"
    texts = decode_captions(data["train_captions"], data["idx_to_word"])
    assert texts[0] == "<START> a red circle <END>"
    assert texts[3] == "<START> " + " ".join(["word"] * 15) + " <END>"
    assert "zebra" not in data["word_to_idx"]  # the vocabulary comes from training only


def test_build_from_a_karpathy_file_with_npy_features(tmp_path):
    def image(i, split, *sentences):
        return {"cocoid": i, "split": split, "filepath": "val2014", "filename": f"{i}.jpg",
                "sentences": [{"tokens": s.split()} for s in sentences]}

    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [
        image(1, "train", "a cat", "the cat"), image(2, "restval", "a dog"),
        image(3, "val", "a cat sat"), image(4, "test", "a dog sat"),
    ]}))
    np.save(tmp_path / "feats.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    (tmp_path / "feats_ids.txt").write_text("4\n3\n2\n1\n")
    report = build_dataset(tmp_path / "out", [tmp_path / "feats.npy"],
                           karpathy=tmp_path / "dataset_coco.json", pca_dim=2)
    assert report.images == {"train": 2, "val": 1, "test": 1}  # the field's test split
    data = load_coco_data(tmp_path / "out", pca_features=False)
    np.testing.assert_array_equal(data["train_features"], [[9, 10, 11], [6, 7, 8]])
    np.testing.assert_array_equal(data["train_image_idxs"], [0, 0, 1])
    assert data["val_urls"][0] == "http://images.cocodataset.org/val2014/3.jpg"
    np.testing.assert_array_equal(data["test_features"], [[0, 1, 2]])
    assert decode_captions(data["test_captions"], data["idx_to_word"]) == [
        "<START> a dog <UNK> <END>"]  # 'sat' is a validation word, not a training one
    assert load_coco_data(tmp_path / "out")["test_features"].shape == (1, 2)  # its PCA
    model = CaptioningRNN(data["word_to_idx"], input_dim=3, wordvec_dim=4, hidden_dim=5,
                          cell_type="lstm", seed=0)
    scores = evaluate(model, data, "test", beams=(1,), meteor=False)["greedy"]
    assert scores["images"] == 1.0 and 0 <= scores["BLEU-1"] <= 1
    data.pop("test_captions")
    with pytest.raises(ValueError, match="no 'test' split in this data"):
        evaluate(model, data, "test", beams=(1,), meteor=False)


def test_build_refuses_what_it_cannot_use(tmp_path):
    train = _coco_json(tmp_path / "t.json", [1], [(1, "a cat")])
    features = _features_h5(tmp_path / "f.h5", [1])
    with pytest.raises(ValueError, match="give --karpathy FILE, or both"):
        build_dataset(tmp_path / "out", [features], coco_train=train)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_dataset(tmp_path / "out", [features], karpathy=tmp_path / "bad.json")
    np.save(tmp_path / "lonely.npy", np.zeros((1, 6), np.float32))
    with pytest.raises(FileNotFoundError, match="lonely_ids.npy or lonely_ids.txt"):
        build_dataset(tmp_path / "out", [tmp_path / "lonely.npy"], coco_train=train,
                      coco_val=train)
    with h5py.File(tmp_path / "noids.h5", "w") as f:
        f["features"] = np.zeros((1, 6), np.float32)
    with pytest.raises(ValueError, match="'features' and 'image_ids'"):
        build_dataset(tmp_path / "out", [tmp_path / "noids.h5"], coco_train=train,
                      coco_val=train)


# ----------------------------------------------------------------- PCA


@pytest.mark.parametrize("rows", [40, 12])  # the covariance path and the Gram path
def test_pca_matches_a_full_svd(rows):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 20)) @ rng.standard_normal((20, 20)) + 5
    pca = fit_pca(x, 4, chunk_rows=7)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign((pca.components * vt[:4].T).sum(axis=0))
    np.testing.assert_allclose(pca.components, vt[:4].T * signs, atol=1e-6)
    np.testing.assert_allclose(pca.explained, s[:4] ** 2 / (s**2).sum(), atol=1e-8)
    np.testing.assert_allclose(pca.transform(x), centred @ vt[:4].T * signs, atol=1e-4)
    with pytest.raises(ValueError, match="PCA dimension 21"):
        fit_pca(x, 21)


def test_pca_folder_rewrites_both_splits(tiny_coco):
    pca = pca_folder(tiny_coco, dim=3, chunk_rows=2)
    data = load_coco_data(tiny_coco)
    full = load_coco_data(tiny_coco, pca_features=False)
    assert data["train_features"].shape == (6, 3) and 0 < pca.explained.sum() <= 1
    np.testing.assert_allclose(data["val_features"], pca.transform(full["val_features"]),
                               atol=1e-6)


def test_long_data_work_shows_progress_when_asked(capsys):
    rng = np.random.default_rng(0)
    fit_pca(rng.standard_normal((50, 6)), 2, chunk_rows=10, progress=True)
    assert "PCA fit" in capsys.readouterr().err
    fit_pca(rng.standard_normal((50, 6)), 2, chunk_rows=10)
    assert capsys.readouterr().err == ""
