"""Self-critical sequence training (Rennie et al., CVPR 2017; the mean-of-others baseline
of Luo, 2020): optimise the CIDEr-D of captions the model writes itself.

Each step takes a minibatch of training images, samples K captions per image from the
model (temperature 1), scores each against the image's references with CIDEr-D, and
descends on

    loss = sum over samples of -(reward - baseline) * log p(sample) / (number of samples)

with log p summed over the sample's words up to and including <END>. That is the
model's softmax loss on the sampled captions with one weight per caption, reward -
baseline, so the policy gradient runs in the same fused kernels as cross-entropy
training. The baseline is the mean reward of the image's other K-1 samples ("mean"), or
the reward of the image's greedy caption ("greedy", the original paper's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from captioning import checks
from captioning.cider import CiderD
from captioning.data.layout import SPECIAL_TOKENS
from captioning.decoding import greedy_decode, policy_sample
from captioning.evaluation import references_by_image
from captioning.training.step import TrainingStep

BASELINES = ("mean", "greedy")


@dataclass(frozen=True)
class SelfCritical:
    """What a self-critical run samples: ``samples_per_image`` captions per image (at
    least 2 with the "mean" baseline, which needs others), scored against the baseline
    ``baseline``, each at most ``max_length`` words (None: the training captions' T)."""

    samples_per_image: int = 5
    baseline: str = "mean"
    max_length: int | None = None

    def __post_init__(self) -> None:
        checks.integer("samples_per_image", self.samples_per_image)
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; expected one of "
                             f"{', '.join(BASELINES)}")
        if self.baseline == "mean" and self.samples_per_image < 2:
            raise ValueError("the 'mean' baseline averages an image's other samples: "
                             f"samples_per_image must be at least 2, got "
                             f"{self.samples_per_image}")
        if self.max_length is not None:
            checks.integer("max_length", self.max_length)


class CaptionRewards:
    """CIDEr-D of captions against the references of the images of one split that have
    any (the first ``max_images`` of them), document frequencies from those references,
    as pycocoevalcap computes it over the same images."""

    def __init__(self, data: dict[str, Any], split: str, max_images: int | None = None
                 ) -> None:
        refs = references_by_image(data, split)
        images = np.array([i for i, r in enumerate(refs) if r], dtype=np.int64)
        if max_images is not None:
            images = images[:max_images]
        if not len(images):
            raise ValueError(f"the {split} split has no images with reference captions")
        self.images = images  # rows of the split's features, in the scorer's order
        self.scorer = CiderD([refs[i] for i in images])
        # Captions are scored from their word indices: each index's id in the scorer, and
        # what the text would drop (the special tokens; everything from <END> on).
        words = list(data["idx_to_word"])
        self.word_ids = self.scorer.word_ids(words)
        self.dropped = np.isin(words, SPECIAL_TOKENS)
        self.end = words.index("<END>") if "<END>" in words else -1

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, captions: np.ndarray, which: np.ndarray) -> np.ndarray:
        """captions: host word indices (rows, L) as the decoders return them; which:
        (rows,) positions in ``images``. -> CIDEr-D per caption, float64 (rows,), the
        score of each caption's text as `decode_captions` and `strip_special` make it."""
        captions = np.asarray(captions)
        before_end = np.cumsum(captions == self.end, axis=1) == 0
        kept = before_end & ~self.dropped[captions]
        return self.scorer.scores_of_words(self.word_ids[captions[kept]], kept.sum(axis=1),
                                           which)

    def greedy_score(self, model: Any, split_features: Any, max_length: int = 16,
                     batch: int = 1000) -> float:
        """Mean CIDEr-D of the model's greedy captions of these images, whose features
        are the rows ``images`` of ``split_features``."""
        scores = []
        for start in range(0, len(self.images), batch):
            which = np.arange(start, min(start + batch, len(self.images)))
            captions = greedy_decode(model, split_features[self.images[which]], max_length)
            scores.append(self(captions, which))
        return float(np.concatenate(scores).mean())


class SelfCriticalStep:
    """``step(batch)``: one self-critical update of ``training_step.model`` from the
    training images ``batch`` (positions in ``rewards.images``, host or device ints);
    returns the loss (a device scalar). The gradients go through ``training_step``'s
    ``descend`` (reduce, clip, update rule), which holds the optimiser's state.

    ``rng`` draws the samples; its state is the run's (checkpointed, so a resumed run
    draws what it would have). ``reward_history`` holds each step's mean sampled reward.
    """

    def __init__(self, training_step: TrainingStep, rewards: CaptionRewards,
                 settings: SelfCritical,
                 seed: int | np.random.SeedSequence | None = None) -> None:
        self.training_step, self.rewards, self.settings = training_step, rewards, settings
        captions = training_step.data.captions
        self.max_length = settings.max_length or int(captions.shape[1]) - 1
        self.start = training_step.model.word_to_idx["<START>"]
        self.rng = np.random.default_rng(seed)
        self.reward_history: list[float] = []

    def __call__(self, batch_idx: Any) -> Any:
        model, k = self.training_step.model, self.settings.samples_per_image
        be = model.backend
        batch = np.asarray(be.to_numpy(batch_idx), dtype=np.int64)
        which = np.repeat(batch, k)  # each image k times, its samples side by side
        features = self.training_step.data.features[be.asarray(self.rewards.images[which])]
        sampled = policy_sample(model, features, self.max_length, self.rng)
        reward = self.rewards(sampled, which)
        advantage = reward - self.baseline(reward, batch, features[::k])
        captions = np.concatenate(
            [np.full((len(sampled), 1), self.start, dtype=sampled.dtype), sampled], axis=1)
        loss, grads = model.loss(features, captions, caption_weights=advantage)
        self.reward_history.append(float(reward.mean()))
        return self.training_step.descend(loss, grads)

    def baseline(self, reward: np.ndarray, batch: np.ndarray, image_features: Any
                 ) -> np.ndarray:
        """Each sample's baseline: the mean reward of its image's other samples, or the
        reward of its image's greedy caption. reward: (images * k,), images' samples
        side by side; batch and image_features: one row per image."""
        k = self.settings.samples_per_image
        if self.settings.baseline == "mean":
            per_image = reward.reshape(-1, k)
            others = (per_image.sum(axis=1, keepdims=True) - per_image) / (k - 1)
            return others.reshape(-1)
        greedy = greedy_decode(self.training_step.model, image_features, self.max_length)
        return np.repeat(self.rewards(greedy, batch), k)
