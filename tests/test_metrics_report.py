"""COCO caption metrics against hand-computed values, and the report folder."""

import re
import shutil

import pytest

from captioning import metrics
from captioning.metrics import caption_metrics, format_metrics, strip_special
from captioning.report import Curves, Sample, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_identical_captions_score_one_on_every_bleu():
    refs = [["a red circle at the top left", "a big red circle"], ["two blue squares here"]]
    scores = caption_metrics(["<START> a red circle at the top left <END>",
                              "two blue squares here"], refs, meteor=False)
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)


def test_a_small_case_by_hand():
    # candidate: a red circle on the left; reference: a red circle at the left.
    # unigrams 5/6, bigrams 3/5 (a red, red circle, the left), trigrams 1/4, equal length.
    scores = caption_metrics(["a red circle on the left"], [["a red circle at the left"]],
                             meteor=False)
    assert scores["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert scores["BLEU-2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5, abs=1e-6)
    assert scores["BLEU-3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert scores["BLEU-4"] < 1e-3  # no 4-gram in common
    assert scores["ROUGE-L"] == pytest.approx(5 / 6)  # LCS 5 of 6 both ways


def test_empty_candidates_and_bad_input():
    scores = caption_metrics(["", "<START> <END>"], [["a cat"], ["a dog"]], meteor=False)
    assert all(scores[m] == 0 for m in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"))
    with pytest.raises(ValueError, match="one list of references per candidate"):
        caption_metrics(["a"], [], meteor=False)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        caption_metrics(["a"], ["a cat"], meteor=False)
    assert strip_special("<START> a <UNK> cat <END> <NULL>") == "a cat"
    assert "skipped" in caption_metrics(["a"], [["a"]], meteor=False)["METEOR"]


def test_meteor_without_java_is_a_reason_not_a_number(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    result = caption_metrics(["a cat"], [["a cat"]])["METEOR"]
    assert result.startswith("skipped: no java on the PATH")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs a Java program; no java")
def test_meteor_runs_where_java_does():
    scores = caption_metrics(["a red circle", "a dog"], [["a red circle"], ["a cat"]])
    assert 0 < scores["METEOR"] < 1


def test_format_metrics_has_a_row_per_method():
    table = format_metrics({"greedy": {"BLEU-1": 0.5, "METEOR": "skipped"}, "beam 3": {}})
    lines = table.splitlines()
    assert len(lines) == 3 and "BLEU-4" in lines[0] and "0.5000" in lines[1]


def _report(tmp_path, urls, data_dir):
    samples = [Sample(u, f"generated {i}", f"reference {i}") for i, u in enumerate(urls)]
    metrics = {"greedy": {"BLEU-4": 0.5, "METEOR": "skipped: no java"}}
    return write_report(tmp_path / "report", samples, data_dir, metrics,
                        Curves([3.0, 2.5, 2.0, 1.8, 1.7, 1.5], [2.2, 1.9], 3))


def test_report_of_local_images(tmp_path, small_shapes):
    urls = [f"images/val/{i:05d}.png" for i in range(5)]
    index = _report(tmp_path, urls, small_shapes)
    folder = index.parent
    for name in ("loss.png", "samples.png"):
        assert (folder / name).read_bytes()[:8] == PNG
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert "loss.png" in sources and "samples.png" not in sources  # one grid: the figures
    assert '<a href="samples.png">' in page
    assert '<h2>Loss</h2><img src="loss.png" alt="training loss and validation loss">' in page
    for src in sources:  # every image the page shows is there
        assert (folder / src).is_file(), src
    assert sum(s.startswith("images/") for s in sources) == 5
    assert "generated 3" in page and "reference 4" in page
    assert '"BLEU-4": 0.5' in (folder / "metrics.json").read_text()


def test_report_of_web_images_skips_the_grid(tmp_path):
    index = _report(tmp_path, ["http://images.example/1.jpg"], tmp_path)
    page = index.read_text()
    assert '<img src="http://images.example/1.jpg"' in page and "No samples.png" in page
    assert not (index.parent / "samples.png").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        _report(tmp_path, ["images/nothing.png"], tmp_path)


def test_report_copies_only_files_inside_the_dataset_folder(tmp_path, small_shapes):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG + b"not for the report")
    urls = ["images/val/00000.png", str(secret), "../" * 12 + str(secret)[1:],
            "images/../../" + secret.name]
    index = _report(tmp_path, urls, small_shapes)
    copied = sorted(p.name for p in (index.parent / "images").iterdir())
    assert copied == ["000.png"]
    assert all(PNG + b"not" not in p.read_bytes() for p in index.parent.rglob("*.png"))
    page = index.read_text()
    assert "Not shown: 3 image(s) whose path lies outside the dataset folder" in page
    assert f"<code>{secret}</code>" in page and "No samples.png" in page
