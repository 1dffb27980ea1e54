"""The command line, end to end: train -> evaluate / sample / report, and the data
commands."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from backend import fastest_available
from captioning.cli import main


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--cell", "rnn",
                 "--hidden", "16", "--wordvec", "8", "--batch-size", "4", "--epochs", "2",
                 "--print-every", "1", "--features", "pca", "--samples", "2",
                 "--backend", "numpy", *extra])


def test_train_then_evaluate_sample_and_report(tiny_coco, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_coco, run, "--no-report") == 0
    out = capsys.readouterr().out
    assert "(Iteration 1 / 6) loss:" in out and "(Iteration 6 / 6) loss:" in out
    assert "(Epoch 2 / 2) train loss" in out and "val loss" in out
    assert out.count("generated:") == 2 and out.count("reference:") == 2
    assert {"checkpoint.npz", "best.npz", "run.json", "train_log.jsonl"} <= {
        p.name for p in run.iterdir()}

    assert main(["evaluate", "--checkpoint", str(run), "--no-meteor", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "beam 2" in out and "captions/s" in out
    table = json.loads((run / "metrics-val.json").read_text())
    assert set(table) == {"greedy", "beam 2"} and 0 <= table["greedy"]["BLEU-1"] <= 1

    assert main(["sample", "--checkpoint", str(run / "checkpoint.npz"), "--n", "3",
                 "--temperature", "0.5", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("generated:") == 3 and out.count("reference:") == 6  # 2 refs per image

    # The COCO-style folder's images are web URLs: the HTML shows them, no PNG grid.
    assert main(["report", "--checkpoint", str(run), "--images", "2"]) == 0
    index = (run / "report" / "index.html").read_text()
    assert "http://images.example/val/" in index and "No samples.png" in index
    assert not (run / "report" / "samples.png").exists()


def test_train_reports_then_refuses_to_overwrite_and_reports_bad_input(tiny_coco, tmp_path,
                                                                      capsys):
    assert _train(tiny_coco, tmp_path / "run") == 0
    assert f"report: {tmp_path / 'run' / 'report' / 'index.html'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())["beam 3"]
    assert _train(tiny_coco, tmp_path / "run") == 1
    assert re.search(r"already holds a run \(run.json, .*checkpoint.npz.*\); continue it with "
                     "--resume", capsys.readouterr().err)
    assert main(["train", "--data", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_coco), "--backend", "tpu",
                 "--out", str(tmp_path / "r2")]) == 1
    assert "unknown backend 'tpu'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_continues_to_the_same_parameters(tiny_coco, tmp_path):
    from captioning.checkpoint import load_model

    assert _train(tiny_coco, tmp_path / "whole", "--no-report", "--epochs", "3") == 0
    assert _train(tiny_coco, tmp_path / "split", "--no-report", "--epochs", "1") == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "3",
                 "--no-report", "--samples", "0"]) == 0
    whole = load_model(tmp_path / "whole" / "checkpoint.npz").params
    split = load_model(tmp_path / "split" / "checkpoint.npz").params
    for name in whole:
        np.testing.assert_array_equal(whole[name], split[name], err_msg=name)


def test_data_commands(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--train", "20",
                 "--val", "5"]) == 0
    assert (tmp_path / "s" / "coco2014_captions.h5").is_file()
    assert main(["data", "pca", str(tmp_path / "s"), "--dim", "4"]) == 0
    assert "4 components keep" in capsys.readouterr().out
    assert main(["data", "pca", str(tmp_path / "nowhere")]) == 1
    assert "missing" in capsys.readouterr().err

    images = [{"cocoid": i, "split": split, "sentences": [{"tokens": ["a", word]}]}
              for i, (split, word) in enumerate([("train", "cat"), ("train", "dog"),
                                                 ("val", "cat")])]
    (tmp_path / "k.json").write_text(json.dumps({"images": images}))
    np.save(tmp_path / "f.npy", np.eye(3, dtype=np.float32))
    (tmp_path / "f_ids.txt").write_text("0\n1\n2\n")
    assert main(["data", "build", "--out", str(tmp_path / "b"), "--features",
                 str(tmp_path / "f.npy"), "--karpathy", str(tmp_path / "k.json"),
                 "--min-count", "1", "--pca-dim", "2"]) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 7 words" in out and "train: 2 images, 2 captions" in out


def test_module_entry_point_help():
    expected = {("train",): ["--data", "--resume", "--epochs", "--backend"],
                ("evaluate",): ["--checkpoint", "--beam", "--shuffled"],
                ("data", "build"): ["--features", "--karpathy", "--min-count"]}
    for command, options in expected.items():
        out = subprocess.run([sys.executable, "-m", "captioning", *command, "--help"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert out.startswith(f"usage: captioning {' '.join(command)}")
        assert [o for o in options if o not in out] == []
    for command, computes in ((["sample"], True), (["report"], True),
                              (["data", "shapes"], False), (["data", "pca"], False)):
        out = subprocess.run([sys.executable, "-m", "captioning", *command, "--help"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert ("--backend" in out) == computes
        assert "(default: None)" not in out and "(default: False)" not in out


def test_version_and_the_backend_line(tiny_coco, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and re.fullmatch(r"captioning \d+\.\d+\.\d+\n",
                                                 capsys.readouterr().out)
    monkeypatch.delenv("CAPTION_BACKEND", raising=False)
    assert main(["train", "--data", str(tiny_coco), "--out", str(tmp_path / "auto"),
                 "--cell", "rnn", "--hidden", "8", "--wordvec", "4", "--epochs", "1",
                 "--features", "pca", "--no-report", "--samples", "0"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    fastest = fastest_available()
    assert first == (f"backend {fastest} (fastest available here"
                     + ("" if fastest == "numpy" else "; --backend numpy for the reference")
                     + ")")
    assert _train(tiny_coco, tmp_path / "chosen", "--no-report", "--epochs", "1",
                  "--backend", "numpy") == 0
    assert capsys.readouterr().out.splitlines()[0] == "backend numpy (--backend)"
    monkeypatch.setenv("CAPTION_BACKEND", "numpy")
    assert main(["sample", "--checkpoint", str(tmp_path / "auto"), "--n", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "backend numpy ($CAPTION_BACKEND)"
