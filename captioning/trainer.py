"""CaptioningTrainer: minibatch training of a CaptioningRNN (the exercise's
CaptioningSolver, which also answers to that name and to ``optim_config``)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from captioning.coco import check_word_indices
from captioning.model import CaptioningRNN
from captioning.optim import get_update_rule

_OPTIONS = {
    "update_rule": "adam", "updater_config": None, "lr_decay": 1.0, "batch_size": 100,
    "num_epochs": 10, "print_every": 10, "verbose": True, "seed": None, "progress": False,
}


class CaptioningTrainer:
    """Trains ``model`` on ``data`` (the dict of ``load_coco_data``).

    Keyword options: update_rule ('sgd', 'sgd_momentum', 'rmsprop', 'adam'),
    updater_config (alias optim_config; e.g. {'learning_rate': 5e-3}), lr_decay (every
    learning rate is multiplied by it after each epoch), batch_size, num_epochs,
    print_every, verbose, seed (of the minibatch draws; default: drawn from NumPy's global
    generator, so ``np.random.seed`` fixes a run) and progress (a progress bar).

    The training features, captions and image indices are moved to the model's backend
    once; each epoch's minibatch indices are drawn on the host in one go and moved once,
    and minibatches are gathered on the device. Losses stay on the device until printed.
    """

    def __init__(self, model: CaptioningRNN, data: dict[str, Any], **kwargs: Any) -> None:
        if "optim_config" in kwargs:
            if "updater_config" in kwargs:
                raise ValueError("give updater_config or optim_config, not both")
            kwargs["updater_config"] = kwargs.pop("optim_config")
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unrecognised arguments {unknown}; expected some of "
                             f"{sorted(_OPTIONS) + ['optim_config']}")
        options = {**_OPTIONS, **kwargs}
        self.model, self.data = model, data
        self.update_rule = get_update_rule(options["update_rule"])
        self.updater_config = dict(options["updater_config"] or {})
        self.optim_config = self.updater_config
        self.lr_decay = float(options["lr_decay"])
        self.batch_size = int(options["batch_size"])
        self.num_epochs = int(options["num_epochs"])
        self.print_every = int(options["print_every"])
        self.verbose = bool(options["verbose"])
        self.progress = bool(options["progress"])
        if self.batch_size < 1 or self.num_epochs < 0 or self.print_every < 1:
            raise ValueError("batch_size and print_every must be at least 1, num_epochs at "
                             "least 0")
        seed = options["seed"]
        self._rng = np.random.default_rng(
            seed if seed is not None else np.random.randint(2**31 - 1)
        )
        self._move_data_to_device()
        self._reset()

    def _move_data_to_device(self) -> None:
        be, model = self.model.backend, self.model
        features = self.data["train_features"]
        if features.ndim != 2 or features.shape[1] != model.input_dim:
            raise ValueError(
                f"train_features have shape {features.shape}; the model expects "
                f"(images, {model.input_dim})"
            )
        captions = np.asarray(self.data["train_captions"])
        image_idxs = np.asarray(self.data["train_image_idxs"])
        if len(captions) == 0 or len(captions) != len(image_idxs):
            raise ValueError(f"{len(captions)} train_captions and {len(image_idxs)} "
                             "train_image_idxs: expected the same, non-zero number")
        check_word_indices(captions, model.vocab_size, "train_captions")
        if image_idxs.min() < 0 or image_idxs.max() >= len(features):
            raise ValueError(f"train_image_idxs reach {int(image_idxs.max())}, but there are "
                             f"only {len(features)} feature rows")
        self._features = be.asarray(features, dtype=model.dtype)
        self._captions = be.asarray(captions)
        self._image_idxs = be.asarray(image_idxs)
        self.num_train = len(captions)
        for name, value in model.params.items():
            model.params[name] = be.asarray(value)

    def _reset(self) -> None:
        self.epoch = 0
        self.loss_history: list[float] = []
        self._pending: list[Any] = []  # device-side losses not yet copied to the host
        self.updater_configs = {p: dict(self.updater_config) for p in self.model.params}
        self.optim_configs = self.updater_configs

    def _flush_losses(self) -> None:
        if self._pending:
            be = self.model.backend
            self.loss_history.extend(float(v) for v in be.to_numpy(be.xp.stack(self._pending)))
            self._pending.clear()

    def _step(self, batch_idx) -> None:
        """One forward/backward pass and update on the captions ``batch_idx`` (device)."""
        model = self.model
        captions = self._captions[batch_idx]
        features = self._features[self._image_idxs[batch_idx]]
        loss, grads = model.loss(features, captions)
        self._pending.append(loss)
        for name, w in model.params.items():
            self.update_rule(w, grads[name], self.updater_configs[name], inplace=True,
                             backend=model.backend)

    @property
    def iterations_per_epoch(self) -> int:
        return max(self.num_train // self.batch_size, 1)

    def train(self) -> list[float]:
        """Run every epoch; returns (and keeps in ``loss_history``) one loss per iteration."""
        be = self.model.backend
        per_epoch = self.iterations_per_epoch
        total = self.num_epochs * per_epoch
        bar = tqdm(total=total, disable=not self.progress, unit="it", file=sys.stderr,
                   dynamic_ncols=True, leave=False)
        say = bar.write if self.progress else print
        t = 0
        for _ in range(self.num_epochs):
            draws = be.asarray(self._rng.integers(0, self.num_train, (per_epoch, self.batch_size)))
            for k in range(per_epoch):
                self._step(draws[k])
                t += 1
                bar.update(1)
                if self.verbose and (t - 1) % self.print_every == 0:
                    self._flush_losses()
                    say(f"(Iteration {t} / {total}) loss: {self.loss_history[-1]:f}")
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.3f}")
            self.epoch += 1
            for config in self.updater_configs.values():
                config["learning_rate"] = config.get("learning_rate", 0) * self.lr_decay
        bar.close()
        self._flush_losses()
        return self.loss_history


CaptioningSolver = CaptioningTrainer
