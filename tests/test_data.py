"""The COCO-layout loader, decode_captions and minibatches, on a folder written by hand."""

import json

import h5py
import numpy as np
import pytest

from captioning import decode_captions, load_coco_data, sample_coco_minibatch
from conftest import VOCAB


def test_loads_every_key_with_the_layout_types(tiny_coco):
    data = load_coco_data(tiny_coco)
    assert set(data) == {
        "train_captions", "train_image_idxs", "val_captions", "val_image_idxs",
        "train_features", "val_features", "idx_to_word", "word_to_idx", "train_urls",
        "val_urls",
    }
    assert data["train_captions"].shape == (12, 17) and data["train_captions"].dtype == np.int32
    assert data["train_image_idxs"].shape == (12,) and data["val_captions"].shape == (8, 17)
    assert data["train_features"].shape == (6, 8) and data["train_features"].dtype == np.float32
    assert load_coco_data(tiny_coco, pca_features=False)["val_features"].shape == (4, 16)
    assert data["idx_to_word"] == VOCAB and data["word_to_idx"]["<END>"] == 2
    assert data["val_urls"][3] == "http://images.example/val/3.jpg"


def test_max_train_keeps_a_subset_with_its_image_indices(tiny_coco):
    full = load_coco_data(tiny_coco)
    np.random.seed(0)
    data = load_coco_data(tiny_coco, max_train=5)
    assert data["train_captions"].shape == (5, 17)
    assert data["train_features"].shape == full["train_features"].shape  # features stay whole
    pairs = {(tuple(c), i) for c, i in zip(full["train_captions"], full["train_image_idxs"])}
    for caption, idx in zip(data["train_captions"], data["train_image_idxs"]):
        assert (tuple(caption), idx) in pairs
    assert len(load_coco_data(tiny_coco, max_train=1000)["train_captions"]) == 12


def test_data_dir_from_environment(tiny_coco, monkeypatch):
    monkeypatch.setenv("CAPTION_DATA", str(tiny_coco))
    assert load_coco_data()["train_captions"].shape == (12, 17)


def test_no_folder_and_no_environment_uses_the_built_in_dataset(monkeypatch, tmp_path):
    import captioning.data.shapes as shapes

    monkeypatch.delenv("CAPTION_DATA", raising=False)
    monkeypatch.setenv("CAPTION_CACHE", str(tmp_path))
    monkeypatch.setattr(shapes, "DEFAULT_TRAIN", 40)
    monkeypatch.setattr(shapes, "DEFAULT_VAL", 10)
    data = load_coco_data()
    assert data["train_features"].shape == (40, 40)  # PCA of 40 images keeps 40 components
    assert len(data["val_captions"]) == 10 * shapes.CAPTIONS_PER_IMAGE


def test_sample_minibatch_matches_its_features(tiny_coco):
    data = load_coco_data(tiny_coco)
    captions, features, urls = sample_coco_minibatch(data, batch_size=7, split="val")
    assert captions.shape == (7, 17) and features.shape == (7, 8) and urls.shape == (7,)
    for feature, url in zip(features, urls):
        image = int(url.rsplit("/", 1)[1].split(".")[0])
        assert np.array_equal(feature, data["val_features"][image])
    with pytest.raises(ValueError, match="no 'test' split in this data .it holds"):
        sample_coco_minibatch(data, split="test")


def test_decode_captions_edge_cases():
    idx_to_word = VOCAB
    decoded = decode_captions(np.array([1, 4, 5, 7, 2, 0, 0]), idx_to_word)
    assert decoded == "<START> a red circle <END>"
    assert decode_captions(np.array([4, 0, 5, 2, 6, 6]), idx_to_word) == "a red <END>"  # stops
    assert decode_captions(np.array([0, 0, 0]), idx_to_word) == ""
    assert decode_captions(np.array([4, 5, 8]), idx_to_word) == "a red square"  # no <END>
    assert decode_captions(np.array([[1, 4, 2], [5, 0, 0]]), idx_to_word) == [
        "<START> a <END>", "red"]
    assert decode_captions(np.array([4, 5]), dict(enumerate(idx_to_word))) == "a red"
    with pytest.raises(ValueError, match="shape"):
        decode_captions(np.zeros((1, 2, 3), int), idx_to_word)


# ---------------------------------------------------------------- every loader error
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco_data(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["coco2014_captions.h5", "coco2014_vocab.json",
                                  "val2014_vgg16_fc7_pca.h5", "train2014_urls.txt"])
def test_missing_file(tiny_coco, name):
    (tiny_coco / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_coco_data(tiny_coco)


def test_missing_hdf5_key(tiny_coco):
    with h5py.File(tiny_coco / "coco2014_captions.h5", "a") as f:
        del f["val_image_idxs"]
    with pytest.raises(ValueError, match="missing HDF5 key 'val_image_idxs'"):
        load_coco_data(tiny_coco)


def test_missing_features_key(tiny_coco):
    with h5py.File(tiny_coco / "train2014_vgg16_fc7_pca.h5", "w") as f:
        f["feats"] = np.zeros((6, 8), np.float32)
    with pytest.raises(ValueError, match="no dataset 'features'"):
        load_coco_data(tiny_coco)


def test_caption_and_index_counts_differ(tiny_coco):
    with h5py.File(tiny_coco / "coco2014_captions.h5", "a") as f:
        idxs = f["train_image_idxs"][()]
        del f["train_image_idxs"]
        f["train_image_idxs"] = idxs[:-1]
    with pytest.raises(ValueError, match="one image index per caption"):
        load_coco_data(tiny_coco)


def test_image_indices_beyond_the_features(tiny_coco):
    with h5py.File(tiny_coco / "val2014_vgg16_fc7_pca.h5", "w") as f:
        f["features"] = np.zeros((3, 8), np.float32)  # captions point at 4 images
    with pytest.raises(ValueError, match="holds 3 feature rows"):
        load_coco_data(tiny_coco)


def test_caption_indices_outside_the_vocabulary(tiny_coco):
    with h5py.File(tiny_coco / "coco2014_captions.h5", "a") as f:
        f["train_captions"][0, 3] = len(VOCAB) + 5
    with pytest.raises(ValueError, match="outside the vocabulary"):
        load_coco_data(tiny_coco)


def test_vocabulary_without_null(tiny_coco):
    words = ["<PAD>"] + VOCAB[1:]
    (tiny_coco / "coco2014_vocab.json").write_text(json.dumps(
        {"idx_to_word": words, "word_to_idx": {w: i for i, w in enumerate(words)}}))
    with pytest.raises(ValueError, match="no '<NULL>' token"):
        load_coco_data(tiny_coco)


def test_inconsistent_vocabulary(tiny_coco):
    (tiny_coco / "coco2014_vocab.json").write_text(json.dumps(
        {"idx_to_word": VOCAB, "word_to_idx": {w: 0 if w == "red" else i
                                               for i, w in enumerate(VOCAB)}}))
    with pytest.raises(ValueError, match="disagree"):
        load_coco_data(tiny_coco)


def test_nan_features(tiny_coco):
    with h5py.File(tiny_coco / "train2014_vgg16_fc7_pca.h5", "a") as f:
        f["features"][4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4 holds NaN"):
        load_coco_data(tiny_coco)


def test_url_count_mismatch(tiny_coco):
    (tiny_coco / "val2014_urls.txt").write_text("http://one\n")
    with pytest.raises(ValueError, match="one URL per image"):
        load_coco_data(tiny_coco)


def test_image_from_url_reads_dataset_paths_and_names_what_fails(small_shapes, tmp_path,
                                                                  monkeypatch):
    from captioning import image_from_url

    image = image_from_url("images/val/00000.png", base_dir=small_shapes)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    monkeypatch.setenv("CAPTION_DATA", str(small_shapes))  # the default folder
    np.testing.assert_array_equal(image_from_url("images/val/00000.png"), image)
    np.testing.assert_array_equal(
        image_from_url(str(small_shapes / "images/val/00000.png")), image)
    with pytest.raises(FileNotFoundError, match="nothing.png does not exist"):
        image_from_url("images/nothing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        image_from_url(str(tmp_path / "text.png"))
    with pytest.raises(ConnectionError, match="cannot fetch the image http://127.0.0.1:9/"):
        image_from_url("http://127.0.0.1:9/x.png")  # nothing listens there
