"""CaptioningTrainer: minibatch training of a CaptioningRNN (the exercise's
CaptioningSolver, which also answers to that name and to ``optim_config``), with
checkpoints that resume exactly, validation, early stopping and guards."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from backend import RecordingFailed
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.data.layout import check_word_indices
from captioning.model import CaptioningRNN
from captioning.optim import adam_table, get_update_rule

_OPTIONS = {
    "update_rule": "adam", "updater_config": None, "lr_decay": 1.0, "batch_size": 100,
    "num_epochs": 10, "print_every": 10, "verbose": True, "seed": None, "progress": False,
    "checkpoint_dir": None, "checkpoint_every": None, "validate": False,
    "val_max_captions": 10_000, "patience": None, "grad_clip": None,
    "handle_interrupt": False, "epoch_callback": None, "cuda_graph": True,
}
CHECKPOINT_NAME, BEST_NAME, LOG_NAME = "checkpoint.npz", "best.npz", "train_log.jsonl"


class TrainingStopped(RuntimeError):
    """Training cannot go on (a non-finite loss, an unwritable checkpoint)."""


class CaptioningTrainer:
    """Trains ``model`` on ``data`` (the dict of ``load_coco_data``).

    Keyword options (the first nine as in the exercise):
    update_rule ('sgd', 'sgd_momentum', 'rmsprop', 'adam'); updater_config (alias
    optim_config; e.g. {'learning_rate': 5e-3}); lr_decay (every learning rate is
    multiplied by it after each epoch); batch_size; num_epochs; print_every; verbose;
    seed (of the minibatch draws; default: drawn from NumPy's global generator, so
    ``np.random.seed`` fixes a run); progress (a tqdm bar per epoch: loss, captions/s, ETA).

    checkpoint_dir: folder for ``checkpoint.npz`` (latest), ``best.npz`` (lowest
    validation loss) and ``train_log.jsonl``; checked to be writable before training.
    checkpoint_every: 'N' iterations or 'Ne' epochs (default: every epoch).
    validate: compute the validation loss after each epoch (on at most
    val_max_captions captions, a fixed subset). patience: stop after that many epochs
    without a better validation loss. grad_clip: rescale the gradients so their global
    norm is at most this. handle_interrupt: Ctrl-C saves a checkpoint and stops cleanly
    (installs a SIGINT handler while training). epoch_callback(trainer, record): called
    after each epoch with its log record, which it may extend (e.g. with metrics).
    cuda_graph: on a backend that can record (CuPy) and with Adam, record the training
    step once as a CUDA graph and replay it, which issues a step's ~100 kernels with one
    launch (the same maths; False runs every step op by op). The first step runs op by op
    (it makes Adam's buffers), the second runs and is recorded; a step recorded against
    other arrays (after ``restore``, or new parameter arrays) is recorded again.

    The training features, captions and image indices are moved to the model's backend
    once; each epoch's minibatch indices are drawn on the host in one go and moved once,
    and minibatches are gathered on the device. Losses stay on the device until printed,
    logged or checked (at print_every and at checkpoints).
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
        self.update_rule_name = options["update_rule"]
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
        self.validate = bool(options["validate"])
        self.val_max_captions = int(options["val_max_captions"])
        self.patience = options["patience"]
        if self.patience is not None and (int(self.patience) != self.patience
                                          or self.patience < 1):
            raise ValueError(f"patience must be a positive number of epochs, got "
                             f"{self.patience!r}")
        self.grad_clip = None if options["grad_clip"] is None else float(options["grad_clip"])
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")
        self.checkpoint_every = _parse_every(options["checkpoint_every"])
        self.cuda_graph = bool(options["cuda_graph"])
        self.handle_interrupt = bool(options["handle_interrupt"])
        self.epoch_callback = options["epoch_callback"]
        self.checkpoint_dir = (Path(options["checkpoint_dir"])
                               if options["checkpoint_dir"] is not None else None)
        seed = options["seed"]
        self._rng = np.random.default_rng(
            seed if seed is not None else np.random.randint(2**31 - 1)
        )
        self._move_data_to_device()
        self._reset()
        if self.checkpoint_dir is not None:
            self._check_output_folder()

    # ------------------------------------------------------------------ setup
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
        if self.validate:
            for key in ("val_captions", "val_image_idxs", "val_features"):
                if key not in self.data:
                    raise ValueError(f"validate=True needs data[{key!r}]")
            count = len(self.data["val_captions"])
            keep = np.sort(np.random.default_rng(0).permutation(count)[: self.val_max_captions])
            self._val = (self.data["val_features"][self.data["val_image_idxs"][keep]],
                         np.asarray(self.data["val_captions"])[keep])

    def _reset(self) -> None:
        self.epoch = 0  # completed epochs
        self.iteration = 0  # completed iterations, all epochs
        self._epoch_step = 0  # completed iterations of the current epoch
        self._epoch_rng_state = self._rng.bit_generator.state  # draws the next epoch's batches
        self.loss_history: list[float] = []
        self.val_history: list[float] = []
        self.best_val_loss = math.inf
        self.epochs_without_improvement = 0
        self.stop_reason: str | None = None
        self._pending: list[Any] = []  # device-side losses not yet copied to the host
        self.updater_configs = {p: dict(self.updater_config) for p in self.model.params}
        self.optim_configs = self.updater_configs
        self._graph: _StepGraph | None = None
        self._recording_off: str | None = None  # why recording failed, once it has

    def _check_output_folder(self) -> None:
        """Fail before training if checkpoints could not be written."""
        folder = self.checkpoint_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise TrainingStopped(f"cannot write to the checkpoint folder {folder}: {exc}") \
                from exc
        # Parameters, Adam's two buffers, and a second copy while the new file is written.
        need = 2 * 3 * sum(int(v.nbytes) for v in self.model.params.values())
        free = shutil.disk_usage(folder).free
        if free < need:
            raise TrainingStopped(f"only {free / 1e6:.1f} MB free in {folder}; checkpoints "
                                  f"need about {need / 1e6:.1f} MB")

    # ------------------------------------------------------------------ one step
    def _step(self, batch_idx) -> None:
        """One forward/backward pass and update on the captions ``batch_idx`` (device)."""
        if self._recordable():
            loss = self._recorded_step(batch_idx)
        else:
            loss = self._loss_and_update(batch_idx, self._rule_update)
        self._pending.append(loss)

    def _loss_and_update(self, batch_idx, update):
        """The step's device work: gather, loss, gradients, clipping, then
        ``update(slot, name, w, dw)`` for each parameter; returns the loss (device)."""
        model = self.model
        captions = self._captions[batch_idx]
        features = self._features[self._image_idxs[batch_idx]]
        loss, grads = model.loss(features, captions)
        if self.grad_clip is not None:
            # A NaN norm gives a NaN scale: the next loss shows it and the run stops.
            norm = model.backend.xp.sqrt(sum((g * g).sum() for g in grads.values()))
            scale = self.grad_clip / model.backend.xp.maximum(norm, self.grad_clip)
            for g in grads.values():
                g *= scale.astype(g.dtype)
        for slot, (name, w) in enumerate(model.params.items()):
            update(slot, name, w, grads[name])
        return loss

    def _rule_update(self, slot: int, name: str, w, dw) -> None:
        self.update_rule(w, dw, self.updater_configs[name], inplace=True,
                         backend=self.model.backend)

    def _recordable(self) -> bool:
        return (self.cuda_graph and self.model.backend.can_record
                and self.update_rule_name == "adam" and self._recording_off is None
                and all("m" in c for c in self.updater_configs.values()))

    def _recorded_step(self, batch_idx):
        """The step through a recorded graph: this step's batch and Adam scalars go into
        the graph's fixed input arrays, then one replay does the rest."""
        be, model = self.model.backend, self.model
        configs = [self.updater_configs[name] for name in model.params]
        arrays = [self._features, self._captions, self._image_idxs, *model.params.values(),
                  *(c[key] for c in configs for key in ("m", "v"))]
        graph = self._graph
        if graph is None or not graph.fits(arrays, batch_idx, self.grad_clip):
            graph = self._graph = _StepGraph(self, arrays, batch_idx)
        be.upload(graph.hyper, adam_table(configs, model.dtype))
        graph.batch[...] = batch_idx
        try:
            loss = graph.recording()
        except RecordingFailed as exc:  # nothing of this step has run
            self._recording_off, self._graph = str(exc), None
            warnings.warn(f"{exc}; training goes on op by op", RuntimeWarning, stacklevel=3)
            return self._loss_and_update(batch_idx, self._rule_update)
        for config in configs:
            config["t"] += 1
        return loss.copy()  # the graph's own loss array is overwritten by the next replay

    def _flush_losses(self) -> None:
        """Copy the pending losses to the host; stop if one is not finite."""
        if not self._pending:
            return
        be = self.model.backend
        first = len(self.loss_history) + 1
        self.loss_history.extend(float(v) for v in be.to_numpy(be.xp.stack(self._pending)))
        self._pending.clear()
        bad = [i for i, v in enumerate(self.loss_history[first - 1 :]) if not math.isfinite(v)]
        if bad:
            raise TrainingStopped(
                f"the loss became {self.loss_history[first - 1 + bad[0]]} at iteration "
                f"{first + bad[0]} (epoch {self.epoch + 1}): non-finite features, loss or "
                "gradients; try a lower learning rate or --grad-clip"
                + (f". The last good checkpoint is {self.checkpoint_dir / CHECKPOINT_NAME}"
                   if self.checkpoint_dir is not None
                   and (self.checkpoint_dir / CHECKPOINT_NAME).exists() else "")
            )

    @property
    def iterations_per_epoch(self) -> int:
        return max(self.num_train // self.batch_size, 1)

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[float]:
        """Run the remaining epochs; returns (and keeps in ``loss_history``) one loss per
        iteration. Sets ``stop_reason`` when it ends early (early stopping, Ctrl-C)."""
        self._interrupted = False
        previous_handler = self._install_interrupt_handler()
        say = tqdm.write if self.progress else print  # keeps a live bar intact
        self._started = (time.perf_counter(), self.iteration)
        try:
            while self.epoch < self.num_epochs and self.stop_reason is None:
                if not self._run_epoch(say):
                    break
                self._end_epoch(say)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        self._flush_losses()
        return self.loss_history

    def _run_epoch(self, say) -> bool:
        """The rest of the current epoch's iterations, with its own progress bar; False
        if Ctrl-C stopped it (after saving)."""
        be = self.model.backend
        per_epoch = self.iterations_per_epoch
        total = self.num_epochs * per_epoch
        self._rng.bit_generator.state = self._epoch_rng_state
        draws = be.asarray(self._rng.integers(0, self.num_train, (per_epoch, self.batch_size)))
        with tqdm(total=per_epoch, initial=self._epoch_step, disable=not self.progress,
                  desc=f"epoch {self.epoch + 1}/{self.num_epochs}", unit="it",
                  file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            while self._epoch_step < per_epoch:
                if self._interrupted:
                    self.stop_reason = "interrupted (Ctrl-C)"
                    saved = self.save()
                    say(f"interrupted at iteration {self.iteration}; "
                        + (f"saved {saved}" if saved else "no checkpoint folder, nothing saved"))
                    return False
                self._step(draws[self._epoch_step])
                self._epoch_step += 1
                self.iteration += 1
                bar.update(1)
                if be.xp is np:  # host losses: checking each one costs nothing
                    self._flush_losses()
                if (self.iteration - 1) % self.print_every == 0:
                    self._flush_losses()
                    started, at = self._started
                    rate = ((self.iteration - at) * self.batch_size
                            / max(time.perf_counter() - started, 1e-9))
                    self._log({"iteration": self.iteration, "epoch": self.epoch + 1,
                               "loss": self.loss_history[-1],
                               "learning_rate": self._learning_rate(),
                               "captions_per_s": round(rate, 1)})
                    if self.verbose:
                        say(f"(Iteration {self.iteration} / {total}) loss: "
                            f"{self.loss_history[-1]:f}")
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.3f}", cap_s=f"{rate:.0f}")
                if self._due("iterations"):
                    self.save()
        return True

    def _end_epoch(self, say) -> None:
        self._flush_losses()
        self.epoch += 1
        self._epoch_step = 0
        self._epoch_rng_state = self._rng.bit_generator.state
        for config in self.updater_configs.values():
            config["learning_rate"] = config.get("learning_rate", 0) * self.lr_decay
        per_epoch = self.iterations_per_epoch
        record: dict[str, Any] = {
            "epoch": self.epoch, "iteration": self.iteration,
            "train_loss": float(np.mean(self.loss_history[-per_epoch:])),
        }
        improved = False
        if self.validate:
            val_loss = self.validation_loss()
            self.val_history.append(val_loss)
            record["val_loss"] = val_loss
            improved = val_loss < self.best_val_loss
            if improved:
                self.best_val_loss, self.epochs_without_improvement = val_loss, 0
            else:
                self.epochs_without_improvement += 1
            if self.verbose:
                say(f"(Epoch {self.epoch} / {self.num_epochs}) train loss "
                    f"{record['train_loss']:.4f}, val loss {val_loss:.4f}"
                    + ("" if improved else f" (best {self.best_val_loss:.4f})"))
        if self.epoch_callback is not None:
            self.epoch_callback(self, record)
        self._log(record)
        if (self.patience is not None and self.validate
                and self.epochs_without_improvement >= self.patience):
            self.stop_reason = (f"early stopping: no better validation loss for "
                                f"{self.patience} epochs")
            say(self.stop_reason)
        if self._due("epochs") or self.stop_reason is not None:
            self.save()
        if improved and self.checkpoint_dir is not None:
            self.save(self.checkpoint_dir / BEST_NAME)

    def validation_loss(self) -> float:
        """Mean loss per caption over the (fixed subset of) validation captions."""
        features, captions = self._val
        total, count = 0.0, 0
        for start in range(0, len(captions), 512):
            batch = slice(start, start + 512)
            loss = self.model.loss(features[batch], captions[batch], grads=False)
            total += float(loss) * len(captions[batch])
            count += len(captions[batch])
        return total / max(count, 1)

    def _due(self, unit: str) -> bool:
        if self.checkpoint_dir is None:
            return False
        every_unit, every = self.checkpoint_every
        if every_unit != unit:
            return False
        return (self.iteration if unit == "iterations" else self.epoch) % every == 0

    def _learning_rate(self) -> float:
        return float(next(iter(self.updater_configs.values())).get("learning_rate", 0))

    def _log(self, record: dict[str, Any]) -> None:
        if self.checkpoint_dir is not None:
            with open(self.checkpoint_dir / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _install_interrupt_handler(self):
        if not self.handle_interrupt:
            return None

        def handler(signum, frame):
            if self._interrupted:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self._interrupted = True

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            return None

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything but the parameters needed to continue exactly: JSON and arrays."""
        self._flush_losses()
        be = self.model.backend
        arrays, optim = {}, {}
        for name, config in self.updater_configs.items():
            optim[name] = {}
            for key, value in config.items():
                if isinstance(value, (int, float)):
                    optim[name][key] = value
                else:
                    arrays[f"optim/{name}/{key}"] = be.to_numpy(value)
        state = {
            "epoch": self.epoch, "iteration": self.iteration, "epoch_step": self._epoch_step,
            "epoch_rng_state": self._epoch_rng_state, "update_rule": self.update_rule_name,
            "optim": optim, "batch_size": self.batch_size, "num_train": self.num_train,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "epochs_without_improvement": self.epochs_without_improvement,
            "val_history": self.val_history,
        }
        arrays["loss_history"] = np.asarray(self.loss_history, dtype=np.float64)
        return state, arrays

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a training checkpoint (default: checkpoint_dir/checkpoint.npz); refuses
        (TrainingStopped) to overwrite a good one with non-finite parameters."""
        if path is None:
            if self.checkpoint_dir is None:
                return None
            path = self.checkpoint_dir / CHECKPOINT_NAME
        state, arrays = self.state()  # raises first if a loss was not finite
        xp = self.model.backend.xp
        bad = [name for name, w in self.model.params.items() if not bool(xp.isfinite(w).all())]
        if bad:  # a non-finite gradient whose loss was still finite
            raise TrainingStopped(
                f"parameters {bad} hold NaN or infinite values at iteration {self.iteration} "
                f"(a non-finite gradient); not saved, so {path} keeps the last good state"
                + ("" if self.grad_clip else "; try --grad-clip or a lower learning rate"))
        try:
            return save_checkpoint(path, self.model, state, arrays)
        except OSError as exc:
            raise TrainingStopped(
                f"could not write the checkpoint {path} ({exc}); any earlier checkpoint "
                "there is intact") from exc

    def restore(self, path: str | Path) -> None:
        """Continue from a training checkpoint written by ``save`` for this model's shapes
        and this data (same vocabulary, features and batch size)."""
        saved, state, arrays = load_checkpoint(path, self.model.backend)
        if state is None:
            raise ValueError(f"{path}: holds a model but no training state; cannot resume")
        if saved.config() != self.model.config():
            raise ValueError(f"{path}: a model of {saved.config()}, but this run builds "
                             f"{self.model.config()}")
        if saved.word_to_idx != self.model.word_to_idx:
            raise ValueError(f"{path}: was trained with another vocabulary than this data's")
        for key in ("batch_size", "num_train", "update_rule"):
            mine = self.update_rule_name if key == "update_rule" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"{path}: was trained with {key}={state[key]!r}, this run "
                                 f"has {mine!r}; resuming exactly needs the same")
        be = self.model.backend
        for name in self.model.params:
            self.model.params[name] = saved.params[name]
        for name, scalars in state["optim"].items():
            config = dict(scalars)
            prefix = f"optim/{name}/"
            for key, value in arrays.items():
                if key.startswith(prefix):
                    config[key[len(prefix):]] = be.asarray(value)
            self.updater_configs[name] = config
        self.optim_configs = self.updater_configs
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self._epoch_step = state["epoch_step"]
        self._epoch_rng_state = state["epoch_rng_state"]
        best = state["best_val_loss"]
        self.best_val_loss = math.inf if best is None else best
        self.epochs_without_improvement = state["epochs_without_improvement"]
        self.val_history = list(state["val_history"])
        self.loss_history = [float(v) for v in arrays.get("loss_history", [])]


class _StepGraph:
    """The trainer's step recorded for replay (``Backend.record``): its fixed input
    arrays (the batch's caption indices; Adam's scalars, one row per parameter) and the
    arrays it was recorded against, held so their memory stays theirs."""

    def __init__(self, trainer: CaptioningTrainer, arrays: list, batch_idx) -> None:
        be, model = trainer.model.backend, trainer.model
        self.arrays, self.grad_clip = arrays, trainer.grad_clip
        self.batch = be.xp.empty_like(batch_idx)
        self.hyper = be.xp.empty((len(model.params), 4), dtype=model.dtype)
        configs = trainer.updater_configs

        def update(slot: int, name: str, w, dw) -> None:
            config = configs[name]
            be.adam_update_device(w, dw, config["m"], config["v"], self.hyper[slot])

        self.recording = be.record(lambda: trainer._loss_and_update(self.batch, update))

    def fits(self, arrays: list, batch_idx, grad_clip: float | None) -> bool:
        """Whether a replay would act on these arrays, this batch shape and clipping."""
        return (grad_clip == self.grad_clip and batch_idx.shape == self.batch.shape
                and len(arrays) == len(self.arrays)
                and all(a is b for a, b in zip(arrays, self.arrays)))


def _parse_every(value: Any) -> tuple[str, int]:
    """'500': every 500 iterations; '2e' or '2 epochs': every 2 epochs; None: every epoch."""
    if value is None:
        return "epochs", 1
    text = str(value).strip().lower()
    unit = "iterations"
    for suffix in ("epochs", "epoch", "e"):
        if text.endswith(suffix):
            text, unit = text[: -len(suffix)].strip(), "epochs"
            break
    try:
        every = int(text)
    except ValueError:
        every = 0
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of iterations ('500') "
                         f"or epochs ('2e'), got {value!r}")
    return unit, every


CaptioningSolver = CaptioningTrainer
