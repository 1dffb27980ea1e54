"""The command line, end to end."""

import subprocess
import sys

from captioning.cli import main


def test_train_end_to_end(tiny_coco, capsys):
    code = main(["train", "--data", str(tiny_coco), "--cell", "rnn", "--hidden", "16",
                 "--wordvec", "8", "--batch-size", "4", "--epochs", "2", "--print-every", "1",
                 "--features", "pca", "--samples", "2", "--backend", "numpy"])
    out = capsys.readouterr().out
    assert code == 0
    assert "(Iteration 1 / 6) loss:" in out and "(Iteration 6 / 6) loss:" in out
    assert out.count("generated:") == 2 and out.count("reference: <START>") == 2


def test_train_reports_bad_input_without_a_traceback(tiny_coco, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_coco), "--backend", "tpu"]) == 1
    assert "unknown backend 'tpu'" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "captioning", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--max-train" in out and "--backend" in out
