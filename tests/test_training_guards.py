"""Training that survives: exact resume, checkpoints that are never half-written,
stops on NaN, Ctrl-C, early stopping, gradient clipping, the log."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from captioning import CaptioningRNN, CaptioningTrainer, load_coco_data
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.trainer import TrainingStopped
from captioning.training import run_folder
from conftest import replaying_backend


def _model(data, backend="numpy", seed=0, hidden=12):
    return CaptioningRNN(data["word_to_idx"], input_dim=data["train_features"].shape[1],
                         wordvec_dim=6, hidden_dim=hidden, cell_type="lstm", seed=seed,
                         backend=backend)


def _trainer(model, data, folder, **options):
    settings = dict(batch_size=4, num_epochs=3, verbose=False, seed=1, lr_decay=0.9,
                    checkpoint_dir=folder, validate=True)
    return CaptioningTrainer(model, data, **{**settings, **options})


def test_resume_mid_epoch_equals_the_uninterrupted_run(backend, tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    whole = _trainer(_model(data, backend), data, tmp_path / "whole")
    whole.train()

    first = _trainer(_model(data, backend), data, tmp_path / "split", checkpoint_every="4")
    step = first.step

    def stop_after_four(batch):  # as if Ctrl-C arrived during iteration 4
        step(batch)
        if first.iteration == 3:  # the loop counts this step once it returns
            first.request_stop()

    first.step = stop_after_four
    first.train()
    assert first.stop_reason.startswith("interrupted") and first.iteration == 4

    resumed = _trainer(_model(data, backend, seed=99), data, tmp_path / "split")
    resumed.restore(tmp_path / "split" / "checkpoint.npz")
    assert (resumed.epoch, resumed.loop.epoch_step) == (1, 1)  # 3 iterations per epoch
    resumed.train()
    exact = backend.name != "cupy"  # atomics make GPU sums order-dependent
    for name, value in whole.model.params.items():
        a, b = backend.to_numpy(value), backend.to_numpy(resumed.model.params[name])
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)
    assert len(resumed.loss_history) == len(whole.loss_history) == 9
    np.testing.assert_allclose(resumed.loss_history, whole.loss_history, rtol=0 if exact else 1e-5)
    assert resumed.val_history == pytest.approx(whole.val_history)


def test_restore_refuses_other_models_and_model_only_files(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    trainer = _trainer(_model(data), data, tmp_path / "a", num_epochs=1)
    trainer.train()
    other = _trainer(_model(data, hidden=5), data, tmp_path / "b")
    with pytest.raises(ValueError, match="a model of .*'hidden_dim': 12.* but this run builds"):
        other.restore(tmp_path / "a" / "checkpoint.npz")
    save_checkpoint(tmp_path / "model.npz", trainer.model)
    with pytest.raises(ValueError, match="no training state; cannot resume"):
        trainer.restore(tmp_path / "model.npz")
    bigger_batch = _trainer(_model(data), data, tmp_path / "c", batch_size=2)
    with pytest.raises(ValueError, match="batch_size=4"):
        bigger_batch.restore(tmp_path / "a" / "checkpoint.npz")


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from captioning import CaptioningRNN
    from captioning.checkpoint import save_checkpoint
    vocab = {"<NULL>": 0, **{f"w{i}": i for i in range(1, 2000)}}
    model = CaptioningRNN(vocab, input_dim=512, wordvec_dim=256, hidden_dim=512,
                          cell_type="lstm", seed=0)
    step = 0
    while True:
        model.params["b"][:] = step
        save_checkpoint(sys.argv[1], model, {"step": step})
        step += 1
        print(step, flush=True)
""")


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.npz"
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint written
        time.sleep(delay)  # most of the time goes into writing the next ones
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model, state, _ = load_checkpoint(path)
        assert np.all(model.params["b"] == state["step"])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.npz"]
    assert all(name.endswith(".tmp") for name in leftovers)  # never under the real name


def test_nan_features_stop_the_run_and_keep_the_last_good_checkpoint(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    data["train_features"] = data["train_features"].copy()
    data["train_features"][2] = np.nan  # captions 4 and 5 belong to image 2
    trainer = _trainer(_model(data), data, tmp_path, checkpoint_every="1", seed=3)
    with pytest.raises(TrainingStopped, match=r"loss became nan at iteration (\d+)") as info:
        trainer.train()
    bad = int(re.search(r"iteration (\d+)", str(info.value)).group(1))
    assert f"last good checkpoint is {tmp_path / 'checkpoint.npz'}" in str(info.value)
    model, state, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state["iteration"] == bad - 1
    assert all(np.isfinite(v).all() for v in model.params.values())


def test_a_non_finite_gradient_is_never_saved(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    trainer = _trainer(_model(data), data, tmp_path, checkpoint_every="1", num_epochs=1)
    step = trainer.step

    def poisoned(batch):  # the loss of this step is fine; its update is not
        step(batch)
        if trainer.iteration == 1:
            trainer.model.params["Wh"][0, 0] = np.inf

    trainer.step = poisoned
    with pytest.raises(TrainingStopped, match=r"parameters \['Wh'\] hold NaN or infinite"):
        trainer.train()
    _, state, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state["iteration"] == 1  # the last good one


def test_ctrl_c_saves_a_checkpoint_that_resumes(tiny_coco, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "captioning", "train", "--data", str(tiny_coco),
               "--out", str(run), "--cell", "rnn", "--hidden", "8", "--wordvec", "4",
               "--batch-size", "4", "--epochs", "100000", "--features", "pca",
               "--patience", "0", "--metrics-every", "0", "--no-report", "--samples", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CAPTION_BACKEND": "numpy"})
    log = run / "train_log.jsonl"
    deadline = time.time() + 60
    while not (log.exists() and log.read_text().count("\n") > 3) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C) at iteration" in out and f"--resume {run}" in out
    _, state, _ = load_checkpoint(run / "checkpoint.npz")
    from captioning.cli import main

    assert main(["train", "--resume", str(run), "--epochs", str(state["epoch"] + 2),
                 "--no-report", "--samples", "0"]) == 0
    _, after, _ = load_checkpoint(run / "checkpoint.npz")
    assert after["epoch"] == state["epoch"] + 2 and after["iteration"] > state["iteration"]


def test_early_stopping_and_the_log(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    trainer = _trainer(_model(data), data, tmp_path, num_epochs=20, patience=2,
                       update_rule="sgd", updater_config={"learning_rate": 1e-30})
    trainer.train()  # so small a learning rate never improves the validation loss
    assert trainer.epoch == 3 and trainer.stop_reason.startswith("early stopping")
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "val_loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all({"iteration", "loss", "learning_rate"} <= set(r) for r in records
               if "val_loss" not in r)
    assert (tmp_path / "best.npz").is_file()


def test_gradient_clipping_bounds_each_update(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    model = _model(data)
    before = {k: v.copy() for k, v in model.params.items()}
    trainer = CaptioningTrainer(model, data, update_rule="sgd", grad_clip=1e-3, batch_size=4,
                                num_epochs=1, verbose=False, seed=0,
                                updater_config={"learning_rate": 1.0})
    trainer.step(np.arange(4))
    change = np.sqrt(sum(((model.params[k] - before[k]) ** 2).sum() for k in before))
    assert 0 < change <= 1e-3 * (1 + 1e-6)
    with pytest.raises(ValueError, match="grad_clip must be a finite number > 0, got 0"):
        CaptioningTrainer(model, data, grad_clip=0)


def test_unwritable_folder_or_full_disk_is_reported_before_training(tiny_coco, tmp_path,
                                                                    monkeypatch):
    data = load_coco_data(tiny_coco)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError, match="cannot write to the run folder .*a-file"):
        _trainer(_model(data), data, tmp_path / "a-file" / "run")

    class Usage:
        free = 10

    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(OSError, match="only 0.0 MB free in .*run; checkpoints need about"):
        _trainer(_model(data), data, tmp_path / "run")


def test_a_failed_write_keeps_the_earlier_checkpoint(tiny_coco, tmp_path, monkeypatch):
    data = load_coco_data(tiny_coco)
    trainer = _trainer(_model(data), data, tmp_path, num_epochs=1)
    trainer.train()
    good = (tmp_path / "checkpoint.npz").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(TrainingStopped, match="No space left.*earlier checkpoint there is intact"):
        trainer.save()
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    assert [p.name for p in tmp_path.glob("*.tmp")] == []


def test_recorded_steps_train_like_op_by_op_steps(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    plain = _trainer(_model(data), data, tmp_path / "plain", grad_clip=1.0)
    plain.train()
    be = replaying_backend()
    recorded = _trainer(_model(data, be), data, tmp_path / "recorded", grad_clip=1.0)
    recorded.train()
    assert len(be.recordings) == 1 and be.recordings[0].calls == 8  # steps 2 to 9
    np.testing.assert_allclose(recorded.loss_history, plain.loss_history, rtol=1e-5)
    for name, value in plain.model.params.items():
        np.testing.assert_allclose(recorded.model.params[name], value, rtol=1e-4, atol=1e-7)
    assert [c["t"] for c in recorded.updater_configs.values()] == [9] * len(plain.model.params)

    # Restoring brings new parameter and Adam arrays: the step is recorded again.
    recorded.restore(tmp_path / "plain" / "checkpoint.npz")
    recorded.num_epochs = 4
    plain.num_epochs = 4
    recorded.train()
    plain.train()
    assert len(be.recordings) == 2
    np.testing.assert_allclose(recorded.loss_history, plain.loss_history, rtol=1e-5)


def test_a_step_that_cannot_be_recorded_runs_op_by_op(tiny_coco, tmp_path):
    data = load_coco_data(tiny_coco)
    plain = _trainer(_model(data), data, tmp_path / "plain")
    plain.train()
    refused = _trainer(_model(data, replaying_backend(refuse=True)), data, tmp_path / "r")
    with pytest.warns(RuntimeWarning, match="refuses to record.*op by op"):
        refused.train()
    assert "refuses to record" in refused.training_step.recording_off
    np.testing.assert_allclose(refused.loss_history, plain.loss_history, rtol=1e-5)
    assert refused.updater_configs["Wx"]["t"] == plain.updater_configs["Wx"]["t"] == 9
