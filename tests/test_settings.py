"""Every setting is checked where it enters, through the command line and the Python API
alike, and a resumed run keeps the settings that make it the run it is."""

import json

import numpy as np
import pytest

from captioning import CaptioningRNN, CaptioningTrainer, load_coco_data
from captioning.cli import main
from captioning.decoding import beam_decode, greedy_decode, sample_decode

# (command line, what the error says): argparse names the option and the value.
CLI_REFUSALS = [
    (["train", "--lr", "-1"], "argument --lr: must be a finite number > 0, got -1.0"),
    (["train", "--lr", "0"], "argument --lr: must be a finite number > 0, got 0.0"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["train", "--lr-decay", "0"], "argument --lr-decay: must be a number in (0, 1], got 0.0"),
    (["train", "--lr-decay", "-2"], "argument --lr-decay: must be a number in (0, 1], got -2.0"),
    (["train", "--lr-decay", "7"], "argument --lr-decay: must be a number in (0, 1], got 7.0"),
    (["train", "--epochs", "0"], "argument --epochs: must be a whole number >= 1, got 0"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be a whole number >= 1"),
    (["train", "--max-train", "-5"], "argument --max-train: must be a whole number >= 1"),
    (["train", "--val-max-captions", "-3"],
     "argument --val-max-captions: must be a whole number >= 1, got -3"),
    (["train", "--val-max-captions", "0"], "argument --val-max-captions: must be a whole"),
    (["train", "--hidden", "0"], "argument --hidden: must be a whole number >= 1, got 0"),
    (["train", "--wordvec", "2.5"], "argument --wordvec: expected a whole number, got '2.5'"),
    (["train", "--print-every", "0"], "argument --print-every: must be a whole number >= 1"),
    (["train", "--patience", "-1"], "argument --patience: must be a whole number >= 0"),
    (["train", "--grad-clip", "0"], "argument --grad-clip: must be a finite number > 0"),
    (["train", "--checkpoint-every", "0e"],
     "argument --checkpoint-every: expected N iterations ('500') or N epochs ('2e')"),
    (["evaluate", "--checkpoint", "x", "--beam", "0"],
     "argument --beam: must be a whole number >= 1, got 0"),
    (["evaluate", "--checkpoint", "x", "--max-images", "0"], "argument --max-images: must be"),
    (["sample", "--checkpoint", "x", "--temperature", "0"],
     "argument --temperature: must be a finite number > 0, got 0.0"),
    (["sample", "--checkpoint", "x", "--temperature", "1", "--top-k", "0"],
     "argument --top-k: must be a whole number >= 1, got 0"),
    (["sample", "--checkpoint", "x", "--n", "0"], "argument --n: must be a whole number >= 1"),
    (["sample", "--checkpoint", "x", "--max-length", "0"],
     "argument --max-length: must be a whole number >= 1, got 0"),
    (["report", "--checkpoint", "x", "--images", "0"], "argument --images: must be a whole"),
    (["data", "shapes", "--train", "0"], "argument --train: must be a whole number >= 1"),
    (["data", "pca", "x", "--dim", "0"], "argument --dim: must be a whole number >= 1"),
    (["data", "build", "--out", "x", "--features", "f", "--min-count", "0"],
     "argument --min-count: must be a whole number >= 1, got 0"),
    (["data", "build", "--out", "x", "--features", "f", "--max-length", "0"],
     "argument --max-length: must be a whole number >= 1, got 0"),
    (["data", "build", "--out", "x", "--features", "f", "--pca-dim", "-1"],
     "argument --pca-dim: must be a whole number >= 1, got -1"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_REFUSALS,
                         ids=[" ".join(a[:3]) for a, _ in CLI_REFUSALS])
def test_the_command_line_refuses_each_bad_setting(argv, message, capsys, tmp_path,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default run folder would appear
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def _model(data, **kwargs):
    return CaptioningRNN(data["word_to_idx"], input_dim=data["train_features"].shape[1],
                         wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=0, **kwargs)


API_REFUSALS = [
    ({"updater_config": {"learning_rate": -1}}, "learning_rate must be a finite number > 0"),
    ({"optim_config": {"learning_rate": 0}}, "learning_rate must be a finite number > 0"),
    ({"lr_decay": 0}, r"lr_decay must be a number in \(0, 1\], got 0"),
    ({"lr_decay": 7}, r"lr_decay must be a number in \(0, 1\], got 7"),
    ({"num_epochs": 0}, "num_epochs must be a whole number >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number >= 1, got 2.5"),
    ({"print_every": -1}, "print_every must be a whole number >= 1"),
    ({"val_max_captions": -3, "validate": True}, "val_max_captions must be a whole number"),
    ({"val_max_captions": 0}, "val_max_captions must be a whole number >= 1, got 0"),
    ({"patience": 0}, "patience must be a whole number >= 1, got 0"),
    ({"grad_clip": -1.0}, "grad_clip must be a finite number > 0, got -1.0"),
    ({"checkpoint_every": "0"}, "checkpoint_every must be a positive number"),
]


@pytest.mark.parametrize(("options", "message"), API_REFUSALS,
                         ids=[next(iter(o)) for o, _ in API_REFUSALS])
def test_the_trainer_refuses_each_bad_setting(tiny_coco, options, message):
    data = load_coco_data(tiny_coco)
    with pytest.raises(ValueError, match=message):
        CaptioningTrainer(_model(data), data, verbose=False, **options)


def test_the_model_loader_and_decoders_refuse_bad_sizes(tiny_coco):
    data = load_coco_data(tiny_coco)
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer, got 0"):
        CaptioningRNN(data["word_to_idx"], hidden_dim=0)
    with pytest.raises(ValueError, match="max_train must be a positive integer, got -3"):
        load_coco_data(tiny_coco, max_train=-3)
    model, features = _model(data), data["val_features"][:2]
    for decode, kwargs, message in [
            (greedy_decode, {"max_length": 0}, "max_length"),
            (beam_decode, {"beam_size": 0}, "beam_size"),
            (sample_decode, {"temperature": -1.0}, "temperature"),
            (sample_decode, {"top_k": 0}, "top_k")]:
        with pytest.raises(ValueError, match=message):
            decode(model, features, **kwargs)
    assert greedy_decode(model, features, max_length=3).shape == (2, 3)
    assert np.isfinite(beam_decode(model, features, beam_size=2, max_length=3)[1]).all()


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--cell", "rnn",
                 "--hidden", "8", "--wordvec", "4", "--batch-size", "4", "--features", "pca",
                 "--metrics-every", "0", "--no-report", "--samples", "0", *extra])


def test_resume_refuses_a_changed_fixed_setting_and_keeps_the_others(tiny_coco, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    assert _train(tiny_coco, run, "--epochs", "1", "--patience", "0",
                  "--checkpoint-every", "2", "--print-every", "7") == 0
    before = (run / "checkpoint.npz").read_bytes()
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 1
    assert ("--lr 0.1 differs from the value this run was started with, 0.001; a resumed "
            "run keeps it") in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--hidden", "8", "--cell", "rnn",
                 "--epochs", "2", "--data", str(tiny_coco)]) == 0  # the same values: fine
    settings = json.loads((run / "run.json").read_text())
    assert (settings["epochs"], settings["patience"], settings["checkpoint_every"],
            settings["print_every"]) == (2, 0, "2", 7)
    assert (run / "checkpoint.npz").read_bytes() != before
