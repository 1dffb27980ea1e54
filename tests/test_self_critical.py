"""Self-critical training: the baselines, the policy-gradient loss, rewards that rise,
exact resume, and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from captioning import CaptioningRNN, CaptioningTrainer
from captioning.checkpoint import load_model
from captioning.cider import CiderD
from captioning.data.vocab import decode_captions
from captioning.decoding import greedy_decode, policy_sample
from captioning.metrics import strip_special
from captioning.training.self_critical import CaptionRewards, SelfCritical

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "green", "circle",
         "square", "star", "big", "small"]
CLASSES = [("a big red circle", "a red circle"), ("a small blue square", "a blue square"),
           ("a green star", "a big green star"), ("a small red square", "a red square")]


def shapes_data(images_per_class: int = 12, seed: int = 0) -> dict:
    """Images whose features say their class (one-hot plus noise) and whose two
    references per image are their class's captions: a model can learn to say them."""
    rng = np.random.default_rng(seed)
    word_to_idx = {w: i for i, w in enumerate(WORDS)}
    data = {"word_to_idx": word_to_idx, "idx_to_word": WORDS}
    for split, count in (("train", images_per_class), ("val", 3)):
        labels = np.repeat(np.arange(len(CLASSES)), count)
        features = np.eye(len(CLASSES))[labels] + 0.1 * rng.standard_normal((len(labels), 4))
        captions, image_idxs = [], []
        for image, label in enumerate(labels):
            for text in CLASSES[label]:
                ids = [1] + [word_to_idx[w] for w in text.split()] + [2]
                captions.append(ids + [0] * (8 - len(ids)))
                image_idxs.append(image)
        data[f"{split}_features"] = features
        data[f"{split}_captions"] = np.array(captions, dtype=np.int32)
        data[f"{split}_image_idxs"] = np.array(image_idxs, dtype=np.int32)
    return data


def _model(data, seed=0, backend="numpy"):
    return CaptioningRNN(data["word_to_idx"], input_dim=4, wordvec_dim=8, hidden_dim=16,
                         cell_type="lstm", dtype=np.float64, seed=seed, backend=backend)


def _scst_trainer(model, data, settings=None, **kwargs):
    settings = settings or SelfCritical(4, "mean")
    options = {"batch_size": 8, "num_epochs": 4, "verbose": False, "seed": 0,
               "updater_config": {"learning_rate": 1e-2}, **kwargs}
    return CaptioningTrainer(model, data, self_critical=settings, **options)


def test_the_mean_baseline_is_the_mean_of_the_image_s_other_samples():
    data = shapes_data()
    step = _scst_trainer(_model(data), data).self_critical
    rewards = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 0.0, 2.0, 6.0])  # two images, k = 4
    expected = [(2 + 3 + 5) / 3, (1 + 3 + 5) / 3, (1 + 2 + 5) / 3, (1 + 2 + 3) / 3,
                (0 + 2 + 6) / 3, (4 + 2 + 6) / 3, (4 + 0 + 6) / 3, (4 + 0 + 2) / 3]
    np.testing.assert_allclose(step.baseline(rewards, np.array([0, 1]), None), expected)


def test_the_greedy_baseline_is_the_reward_of_the_image_s_greedy_caption():
    data = shapes_data()
    model = _model(data)
    step = _scst_trainer(model, data, SelfCritical(3, "greedy")).self_critical
    batch = np.array([0, 13, 40])
    features = data["train_features"][step.rewards.images[batch]]
    baseline = step.baseline(np.zeros(9), batch, features)
    # The same figure from the text of each greedy caption and pycocoevalcap-equal CIDEr-D
    greedy = decode_captions(greedy_decode(model, features, step.max_length), WORDS)
    refs = [[" ".join(t.split()) for t in CLASSES[label]] for label in range(4)
            for _ in range(12)]
    expected = CiderD(refs).scores([strip_special(t) for t in greedy], batch)
    np.testing.assert_allclose(baseline, np.repeat(expected, 3), rtol=1e-12)


def test_the_loss_is_minus_the_advantage_times_the_log_probability_of_each_sample(backend):
    data = shapes_data()
    model = _model(data, seed=3, backend=backend)
    trainer = _scst_trainer(model, data, SelfCritical(4, "mean"), seed=5)
    step = trainer.self_critical
    batch = np.array([2, 7, 30])
    features = data["train_features"][step.rewards.images[np.repeat(batch, 4)]]
    # What the step will draw: the same generator state, the parameters before the update
    sampled = policy_sample(model, features, step.max_length, _copy(step.rng))
    reward = step.rewards(sampled, np.repeat(batch, 4))
    advantage = reward - step.baseline(reward, batch, None)
    log_p = []
    for feature, caption in zip(features, sampled):
        row = np.concatenate([[1], caption])[None]
        log_p.append(-float(model.loss(feature[None], row, grads=False)))  # one caption
    expected = float(np.mean(-advantage * np.array(log_p)))
    loss = step(backend.asarray(batch))
    assert float(loss) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert step.reward_history == [pytest.approx(reward.mean())]


def _copy(rng: np.random.Generator) -> np.random.Generator:
    twin = np.random.default_rng()
    twin.bit_generator.state = rng.bit_generator.state
    return twin


def test_self_critical_training_raises_the_mean_sampled_reward(backend):
    data = shapes_data()
    model = _model(data, backend=backend)
    CaptioningTrainer(model, data, batch_size=16, num_epochs=3, verbose=False, seed=0,
                      updater_config={"learning_rate": 1e-2}).train()  # a weak start
    trainer = _scst_trainer(model, data, num_epochs=12, validate=True)
    trainer.train()
    rewards = trainer.self_critical.reward_history
    per_epoch = trainer.iterations_per_epoch
    first, last = np.mean(rewards[:2 * per_epoch]), np.mean(rewards[-2 * per_epoch:])
    assert last > first + 0.5, (first, last)
    assert trainer.val_history[-1] > trainer.val_history[0]  # greedy CIDEr-D on val


def test_a_resumed_self_critical_run_continues_bit_for_bit(tmp_path):
    data = shapes_data()
    straight = _model(data)
    _scst_trainer(straight, data, num_epochs=4, validate=True).train()
    first = _model(data)
    trainer = _scst_trainer(first, data, num_epochs=2, validate=True,
                            checkpoint_dir=tmp_path / "run")
    trainer.train()
    resumed = _model(data, seed=9)  # other parameters: the checkpoint must set them all
    again = _scst_trainer(resumed, data, num_epochs=4, validate=True,
                          checkpoint_dir=tmp_path / "run")
    again.restore(tmp_path / "run" / "checkpoint.npz")
    again.train()
    for name, w in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], w, err_msg=name)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert [r["epoch"] for r in records if "val_cider" in r] == [1, 2, 3, 4]


def test_bad_self_critical_settings_are_refused():
    with pytest.raises(ValueError, match="unknown baseline 'best'; expected one of mean"):
        SelfCritical(5, "best")
    with pytest.raises(ValueError, match="samples_per_image must be at least 2, got 1"):
        SelfCritical(1, "mean")
    SelfCritical(1, "greedy")  # the greedy baseline needs no other samples
    data = shapes_data()
    with pytest.raises(ValueError, match="self_critical must be a SelfCritical"):
        CaptioningTrainer(_model(data), data, self_critical={"samples": 5})


def test_a_cross_entropy_checkpoint_does_not_resume_as_self_critical(tmp_path):
    data = shapes_data()
    CaptioningTrainer(_model(data), data, batch_size=16, num_epochs=1, verbose=False,
                      checkpoint_dir=tmp_path / "xe").train()
    trainer = _scst_trainer(_model(data), data)
    with pytest.raises(ValueError, match="a cross-entropy run's checkpoint.*--init"):
        trainer.restore(tmp_path / "xe" / "checkpoint.npz")


def test_rewards_from_word_indices_equal_the_score_of_the_captions_text():
    """The rewards skip the text: the same CIDEr-D as the decoded, stripped captions, with
    <NULL>, <UNK> and <START> inside a caption, words after <END>, and no <END>."""
    data = shapes_data()
    rewards = CaptionRewards(data, "train")
    rng = np.random.default_rng(4)
    captions = rng.integers(0, len(WORDS), (300, 12))
    captions[:100, 6] = 2  # <END> then more words
    captions[100:200] = np.where(captions[100:200] == 2, 5, captions[100:200])  # no <END>
    captions[200:] = rng.integers(4, len(WORDS), (100, 12))  # plain words
    which = rng.integers(0, len(rewards), 300)
    texts = [strip_special(t) for t in decode_captions(captions, WORDS)]
    expected = rewards.scorer.scores(texts, which)
    np.testing.assert_allclose(rewards(captions, which), expected, rtol=1e-12, atol=1e-15)
    assert (expected > 0).any() and (expected == 0).any()


def test_rewards_need_a_split_with_references():
    data = shapes_data()
    data["val_captions"] = data["val_captions"][:0]
    data["val_image_idxs"] = data["val_image_idxs"][:0]
    with pytest.raises(ValueError, match="the val split has no images with reference"):
        CaptionRewards(data, "val")


# ---------------------------------------------------------------------- the command line
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "captioning", "train", "--backend", "numpy",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_the_command_line_runs_and_resumes_self_critical_training(tiny_coco, tmp_path):
    xe = tmp_path / "xe"
    out = _cli("--data", tiny_coco, "--features", "full", "--hidden", 16, "--wordvec", 8,
               "--epochs", 2, "--batch-size", 4, "--no-report", "--metrics-every", 0,
               "--out", xe)
    assert out.returncode == 0, out.stderr
    scst = tmp_path / "scst"
    out = _cli("--scst", "--init", xe, "--hidden", 32, "--out", scst)
    assert out.returncode != 0 and "--hidden 32 differs from the --init model's 16" in out.stderr
    assert not scst.exists()
    out = _cli("--scst", "--init", xe, "--epochs", 1, "--batch-size", 2, "--scst-samples", 3,
               "--no-report", "--metrics-every", 0, "--out", scst)
    assert out.returncode == 0, out.stderr
    assert "self-critical training (3 samples per image, mean baseline)" in out.stdout
    assert "val greedy CIDEr-D" in out.stdout and (scst / "best.npz").is_file()
    settings = json.loads((scst / "run.json").read_text())
    assert settings["hidden"] == 16 and settings["lr"] == 5e-5 and settings["scst"] is True
    records = [json.loads(line) for line in (scst / "train_log.jsonl").open()]
    assert any("mean_reward" in r for r in records) and "val_cider" in records[-1]
    out = _cli("--resume", scst, "--epochs", 2, "--metrics-every", 0)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout and "(Epoch 2 / 2)" in out.stdout
    page = (scst / "report" / "index.html").read_text()  # rewards, not losses, plotted
    assert "<h2>Reward</h2>" in page and "validation greedy CIDEr-D" in page
    assert load_model(scst / "checkpoint.npz").hidden_dim == 16
    out = _cli("--resume", scst, "--scst-samples", 4)
    assert out.returncode != 0 and "--scst-samples 4 differs" in out.stderr


def test_the_command_line_refuses_what_self_critical_training_cannot_do(tiny_coco,
                                                                        tmp_path):
    for args, expected in (
        (["--scst"], "--scst needs --init"),
        (["--init", tmp_path], "--init is for self-critical training: add --scst"),
        (["--baseline", "greedy"], "--baseline is for self-critical training"),
        (["--scst", "--init", tmp_path / "absent"], "does not exist"),
        (["--scst", "--scst-samples", 0, "--init", tmp_path], "a whole number >= 1"),
        (["--scst", "--scst-samples", 1, "--init", tmp_path],
         "samples_per_image must be at least 2"),
    ):
        out = _cli("--data", tiny_coco, "--out", tmp_path / "run", *args)
        assert out.returncode != 0 and expected in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
