"""CaptioningTrainer: minibatch training of a CaptioningRNN (the exercise's
CaptioningSolver, which also answers to that name and to ``optim_config``), with
checkpoints that resume exactly, validation, early stopping and guards.

It puts together the parts in ``captioning/training/``: the loop (epochs, batches,
progress), the step (loss, gradients, update), the run folder (checkpoints, log), the
validation set and early stopping. This module decides what happens after each step and
each epoch, and what a checkpoint holds.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from captioning import checks
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.model import CaptioningRNN
from captioning.training.errors import TrainingStopped
from captioning.training.loop import TrainingLoop
from captioning.training.losses import LossLog
from captioning.training.run_folder import RunFolder, RunFolderBusy
from captioning.training.schedule import Every
from captioning.training.self_critical import CaptionRewards, SelfCritical, SelfCriticalStep
from captioning.training.step import DeviceData, TrainingStep
from captioning.training.validation import EarlyStopping, ValidationSet

__all__ = ["CaptioningSolver", "CaptioningTrainer", "TrainingStopped"]

_OPTIONS = {
    "update_rule": "adam", "updater_config": None, "lr_decay": 1.0, "batch_size": 100,
    "num_epochs": 10, "print_every": 10, "verbose": True, "seed": None, "progress": False,
    "checkpoint_dir": None, "checkpoint_every": None, "validate": False,
    "val_max_captions": 10_000, "patience": None, "grad_clip": None,
    "handle_interrupt": False, "epoch_callback": None, "cuda_graph": True,
    "reduce_gradients": None, "data_parallel": None, "self_critical": None,
    "val_max_images": 1000,
}
OBJECTIVES = ("cross-entropy", "self-critical")


# What a training checkpoint's state must hold, and of what type.
_STATE_TYPES = {
    "epoch": int, "iteration": int, "epoch_step": int, "epoch_rng_state": dict,
    "update_rule": str, "optim": dict, "batch_size": int, "num_train": int,
    "epochs_without_improvement": int, "val_history": list,
}


def _loop_attribute(name: str, doc: str, settable: bool = False) -> property:
    """A trainer attribute that is its loop's."""
    def get(self: CaptioningTrainer) -> Any:
        return getattr(self.loop, name)

    def set_(self: CaptioningTrainer, value: Any) -> None:
        setattr(self.loop, name, value)

    return property(get, set_ if settable else None, doc=doc)


class CaptioningTrainer:
    """Trains ``model`` on ``data`` (the dict of ``load_coco_data``).

    Keyword options (the first seven as in the exercise):
    update_rule ('sgd', 'sgd_momentum', 'rmsprop', 'adam'); updater_config (alias
    optim_config; e.g. {'learning_rate': 5e-3}); lr_decay (every learning rate is
    multiplied by it after each epoch); batch_size; num_epochs; print_every; verbose;
    seed (of the minibatch draws; default: drawn from NumPy's global generator, so
    ``np.random.seed`` fixes a run); progress (a tqdm bar per epoch: loss, captions/s, ETA).

    checkpoint_dir: the run folder (a path or a ``RunFolder``) for ``checkpoint.npz``
    (latest), ``best.npz`` (lowest validation loss) and ``train_log.jsonl``; checked to
    be writable before training (OSError if not). The trainer holds the folder's lock
    while it writes there (training, saving): another process writing there gets
    RunFolderBusy. checkpoint_every: 'N' iterations or 'Ne' epochs (default: every
    epoch). validate: compute the validation loss after each epoch (on at most
    val_max_captions captions, a fixed subset). patience: stop after that many epochs
    without a better validation loss. grad_clip: rescale the gradients so their global
    norm is at most this. handle_interrupt: Ctrl-C saves a checkpoint and stops cleanly
    (a SIGINT handler while training). epoch_callback(trainer, record): called after
    each epoch with its log record, which it may extend (e.g. with metrics). cuda_graph:
    replay the step from a CUDA graph where the backend can (``TrainingStep`` says
    when).
    reduce_gradients(loss, grads) -> loss: called in every step between the backward pass
    and clipping, to sum the gradients of a batch split across processes.
    data_parallel: an ``MpiDataParallel``: parameters broadcast from rank 0 now, each step
    on this rank's share of the batch, its reduce as reduce_gradients, and the ranks'
    parameters checked to be identical at the end of ``train``.
    self_critical: a ``SelfCritical`` (training/self_critical.py): optimise CIDEr-D on
    the model's own samples instead of cross-entropy; then batch_size counts training
    images (each sampled samples_per_image times), an epoch is one pass over the images,
    and with validate=True each epoch also scores greedy CIDEr-D on the first
    val_max_images validation images, which picks best.npz and drives early stopping.

    The training features, captions and image indices are moved to the model's backend
    once; each epoch's minibatch indices are drawn on the host in one go, each batch is
    sorted there by caption length (the step computes it packed) and moved, and
    minibatches are gathered on the device. Losses stay on the device until printed,
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
        o = {**_OPTIONS, **kwargs}
        for key in ("batch_size", "num_epochs", "print_every", "val_max_captions"):
            o[key] = checks.integer(key, o[key])
        o["updater_config"] = dict(o["updater_config"] or {})
        if "learning_rate" in o["updater_config"]:
            checks.positive("learning_rate", o["updater_config"]["learning_rate"])
        self.model, self.data = model, data
        self.updater_config = self.optim_config = o["updater_config"]  # as given
        self.lr_decay = checks.fraction("lr_decay", o["lr_decay"])
        self.checkpoint_every = Every.parse(o["checkpoint_every"])
        self.epoch_callback = o["epoch_callback"]
        self.handle_interrupt = bool(o["handle_interrupt"])
        train = DeviceData.from_split(model, data)
        for name, value in model.params.items():
            model.params[name] = model.backend.asarray(value)
        self.data_parallel = parallel = o["data_parallel"]
        if parallel is not None:
            if o["reduce_gradients"] is not None:
                raise ValueError("give data_parallel or reduce_gradients, not both")
            parallel.attach(model.backend)  # the CLI has already, before building the model
            parallel.broadcast(model.params, model.backend)
        settings = o["self_critical"]
        if settings is not None and not isinstance(settings, SelfCritical):
            raise ValueError(f"self_critical must be a SelfCritical, got {settings!r}")
        if settings is not None and parallel is not None:
            raise ValueError("self-critical training runs in one process: it is not built "
                             "for data-parallel ranks (give data_parallel or self_critical)")
        self.objective = OBJECTIVES[settings is not None]
        self.training_step = TrainingStep(
            model, train, o["update_rule"], o["updater_config"],
            grad_clip=None if o["grad_clip"] is None else checks.positive("grad_clip",
                                                                          o["grad_clip"]),
            # A host Allreduce or host rewards cannot be recorded into a CUDA graph.
            cuda_graph=bool(o["cuda_graph"]) and parallel is None and settings is None,
            reduce_gradients=(parallel.reducer(model.backend) if parallel is not None
                              else o["reduce_gradients"]),
            share_batch=parallel.share if parallel is not None else None)
        self.self_critical = None
        if settings is not None:
            # The samples' generator: from the run's seed, independent of the batches'.
            seed = (np.random.SeedSequence(o["seed"]).spawn(1)[0] if o["seed"] is not None
                    else np.random.randint(2**31))
            self.self_critical = SelfCriticalStep(
                self.training_step, CaptionRewards(data, "train"), settings, seed)
        # What an epoch passes over: the training captions, or the images with references.
        units = len(train) if self.self_critical is None else len(self.self_critical.rewards)
        self.loop = TrainingLoop(units, o["batch_size"], o["num_epochs"],
                                 o["seed"], o["print_every"], bool(o["verbose"]),
                                 bool(o["progress"]))
        if parallel is not None:
            self.loop.agree_to_stop = parallel.agree_to_stop
        self.validation = (ValidationSet(data, o["val_max_captions"])
                           if o["validate"] else None)
        self.val_rewards = (CaptionRewards(data, "val", checks.integer(
            "val_max_images", o["val_max_images"])) if o["validate"] and settings else None)
        self.early_stopping = EarlyStopping(o["patience"],
                                            higher_is_better=settings is not None)
        self.val_history: list[float] = []
        self._losses = LossLog(model.backend)
        folder = o["checkpoint_dir"]
        self.run_folder = (folder if isinstance(folder, RunFolder) or folder is None
                           else RunFolder(folder))
        if self.run_folder is not None:
            with self.run_folder.owned():
                # Parameters, Adam's two buffers, and a second copy while a file is written.
                self.run_folder.check_writable(
                    2 * 3 * sum(int(v.nbytes) for v in model.params.values()))

    # ------------------------------------------------------------------ the public face
    def train(self) -> list[float]:
        """Run the remaining epochs; returns (and keeps in ``loss_history``) one loss per
        iteration. Sets ``stop_reason`` when it ends early (early stopping, Ctrl-C)."""
        with self._owning_folder():
            if self.handle_interrupt:
                with self.loop.ctrl_c_requests_stop():
                    self.loop.run(self)
            else:
                self.loop.run(self)
        if self.data_parallel is not None:
            self.data_parallel.check_identical(self.model.params, self.model.backend)
        return self.losses()

    def step(self, batch_idx: Any) -> None:
        """One update from the captions ``batch_idx`` (indices into the training
        captions, a host or device integer array); its loss joins ``loss_history``. The
        loop calls this for every iteration; it does not count iterations itself."""
        step = self.self_critical or self.training_step
        self._losses.add(step(batch_idx))
        if self._losses.on_host:  # checking each loss costs nothing there
            self.losses()

    def request_stop(self, reason: str = "interrupted (Ctrl-C)") -> None:
        """Stop before the next step, saving a checkpoint, as Ctrl-C does."""
        self.loop.request_stop(reason)

    def losses(self) -> list[float]:
        """``loss_history``, with every pending loss copied to the host first; raises
        TrainingStopped naming the iteration if one is not finite."""
        bad = self._losses.flush()
        if bad is not None:
            iteration, value = bad
            raise TrainingStopped(
                f"the loss became {value} at iteration {iteration} (epoch "
                f"{self.loop.epoch + 1}): non-finite features, loss or gradients; try a lower "
                "learning rate or --grad-clip" + self._last_good_checkpoint())
        return self._losses.history

    def validation_loss(self) -> float:
        """Mean loss per caption over the (fixed subset of) validation captions."""
        if self.validation is None:
            raise ValueError("this trainer was built without validate=True")
        parallel = self.data_parallel
        if parallel is None:
            return self.validation.loss(self.model)
        return self.validation.loss(self.model, parallel.my_part(len(self.validation)),
                                    parallel.sum_over_ranks)

    def validation_cider(self) -> float:
        """Mean CIDEr-D of greedy captions of the first val_max_images validation images
        (a self-critical run's validation score)."""
        if self.val_rewards is None:
            raise ValueError("this trainer was built without validate=True and self_critical")
        return self.val_rewards.greedy_score(
            self.model, self.data["val_features"], self.self_critical.max_length)

    # ------------------------------------------------------------------ the loop's hooks
    def log(self, record: dict[str, Any]) -> None:
        """Add the learning rate (and a self-critical run's mean sampled reward since the
        last record) to ``record`` and write it to the run's log."""
        record["learning_rate"] = self.training_step.learning_rate()
        if self.self_critical is not None:
            rewards = self.self_critical.reward_history
            recent = rewards[-min(self.print_every, len(rewards)):]
            record["mean_reward"] = float(np.mean(recent)) if recent else None
        if self.run_folder is not None:
            self.run_folder.append_log(record)

    def after_step(self) -> None:
        if self.checkpoint_every.due("iterations", self.iteration):
            self.save()

    def after_epoch(self) -> str | None:
        """Decay the learning rate, validate, call the epoch callback, log, and save."""
        self.training_step.decay_learning_rate(self.lr_decay)
        per_epoch = self.iterations_per_epoch
        record: dict[str, Any] = {"epoch": self.epoch, "iteration": self.iteration,
                                  "train_loss": float(np.mean(self.losses()[-per_epoch:]))}
        improved, stop = False, None
        if self.validation is not None:
            val_loss = record["val_loss"] = self.validation_loss()
            line = (f"(Epoch {self.epoch} / {self.num_epochs}) train loss "
                    f"{record['train_loss']:.4f}, val loss {val_loss:.4f}")
            if self.self_critical is None:
                self.val_history.append(val_loss)
                selected, figure = val_loss, "validation loss"
            else:
                selected = record["val_cider"] = self.validation_cider()
                self.val_history.append(selected)
                figure = "validation greedy CIDEr-D"
                line += f", val greedy CIDEr-D {selected:.4f}"
            improved = self.early_stopping.update(selected)
            if self.verbose:
                self.loop.say(line + ("" if improved
                                      else f" (best {self.early_stopping.best:.4f})"))
            if self.early_stopping.exhausted:
                stop = (f"early stopping: no better {figure} for "
                        f"{self.early_stopping.patience} epochs")
                self.loop.say(stop)
        if self.epoch_callback is not None:
            self.epoch_callback(self, record)
        if self.run_folder is not None:
            self.run_folder.append_log(record)
        if self.checkpoint_every.due("epochs", self.epoch) or stop is not None:
            self.save()
        if improved and self.run_folder is not None:
            self.save(self.run_folder.best)
        return stop

    def interrupted(self) -> None:
        saved = self.save()
        self.loop.say(f"{self.stop_reason} at iteration {self.iteration}; "
                      + (f"saved {saved}" if saved else "no checkpoint folder, nothing saved"))

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything but the parameters needed to continue exactly: JSON and arrays."""
        history = self.losses()
        be = self.model.backend
        arrays, optim = {}, {}
        for name, config in self.training_step.configs.items():
            optim[name] = {}
            for key, value in config.items():
                if isinstance(value, (int, float)):
                    optim[name][key] = value
                else:
                    arrays[f"optim/{name}/{key}"] = be.to_numpy(value)
        loop, stopping = self.loop, self.early_stopping
        state = {
            "epoch": loop.epoch, "iteration": loop.iteration, "epoch_step": loop.epoch_step,
            "epoch_rng_state": loop.epoch_rng_state,
            "update_rule": self.training_step.update_rule_name, "optim": optim,
            "batch_size": loop.batch_size, "num_train": loop.num_train,
            "best_val_loss": stopping.best if math.isfinite(stopping.best) else None,
            "epochs_without_improvement": stopping.epochs_without_improvement,
            "val_history": self.val_history, "objective": self.objective,
        }
        arrays["loss_history"] = np.asarray(history, dtype=np.float64)
        if self.self_critical is not None:
            state["sampling_rng_state"] = self.self_critical.rng.bit_generator.state
            arrays["reward_history"] = np.asarray(self.self_critical.reward_history,
                                                  dtype=np.float64)
        return state, arrays

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a training checkpoint (default: the run folder's checkpoint.npz; None
        without a run folder); refuses (TrainingStopped) to overwrite a good one with
        non-finite parameters."""
        if path is None:
            if self.run_folder is None:
                return None
            path = self.run_folder.checkpoint
        state, arrays = self.state()  # raises first if a loss was not finite
        xp = self.model.backend.xp
        bad = [name for name, w in self.model.params.items() if not bool(xp.isfinite(w).all())]
        if bad:  # a non-finite gradient whose loss was still finite
            raise TrainingStopped(
                f"parameters {bad} hold NaN or infinite values at iteration {self.iteration} "
                f"(a non-finite gradient); not saved, so {path} keeps the last good state"
                + ("" if self.training_step.grad_clip
                   else "; try --grad-clip or a lower learning rate"))
        try:
            with self._owning_folder():
                return save_checkpoint(path, self.model, state, arrays)
        except RunFolderBusy:
            raise
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
        garbled = [key for key, kind in _STATE_TYPES.items()
                   if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
        if garbled or sorted(state["optim"]) != sorted(self.model.params):
            raise ValueError(f"{path}: its training state lacks or garbles "
                             f"{garbled or ['optim']}; expected what training saves")
        loop, step = self.loop, self.training_step
        objective = state.get("objective", "cross-entropy")  # older checkpoints: XE only
        if objective != self.objective:
            raise ValueError(f"{path}: a {objective} run's checkpoint, and this trainer "
                             f"does {self.objective} training; resume it as it was trained"
                             + (" (start self-critical training from it with --init)"
                                if self.objective == "self-critical" else ""))
        if self.self_critical is not None and not isinstance(
                state.get("sampling_rng_state"), dict):
            raise ValueError(f"{path}: its training state lacks sampling_rng_state; "
                             "expected what self-critical training saves")
        mine = {"batch_size": loop.batch_size, "num_train": loop.num_train,
                "update_rule": step.update_rule_name}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"{path}: was trained with {key}={state[key]!r}, this run "
                                 f"has {value!r}; resuming exactly needs the same")
        be = self.model.backend
        for name in self.model.params:
            self.model.params[name] = saved.params[name]
        for name, scalars in state["optim"].items():
            config = dict(scalars)
            prefix = f"optim/{name}/"
            for key, value in arrays.items():
                if key.startswith(prefix):
                    config[key[len(prefix):]] = be.asarray(value)
            step.configs[name] = config
        loop.epoch, loop.iteration = state["epoch"], state["iteration"]
        loop.epoch_step, loop.epoch_rng_state = state["epoch_step"], state["epoch_rng_state"]
        best = state["best_val_loss"]
        if best is not None:
            self.early_stopping.best = best
        self.early_stopping.epochs_without_improvement = state["epochs_without_improvement"]
        self.val_history = list(state["val_history"])
        self._losses.history[:] = [float(v) for v in arrays.get("loss_history", [])]
        if self.self_critical is not None:
            self.self_critical.rng.bit_generator.state = state["sampling_rng_state"]
            self.self_critical.reward_history[:] = [
                float(v) for v in arrays.get("reward_history", [])]

    # ------------------------------------------------------------------ the exercise's names
    @property
    def loss_history(self) -> list[float]:
        """One float per iteration (those still on the device are copied when read)."""
        return self.losses()

    @property
    def optim_configs(self) -> dict[str, dict[str, Any]]:
        """Each parameter's update-rule settings and state (the exercise's name)."""
        return self.training_step.configs

    updater_configs = optim_configs

    @property
    def update_rule(self):
        """The update rule's function (``captioning.optim``), as in the exercise."""
        return self.training_step.update_rule

    epoch = _loop_attribute("epoch", "Completed epochs.")
    iteration = _loop_attribute("iteration", "Completed iterations, all epochs.")
    num_epochs = _loop_attribute("num_epochs", "Epochs in all (may be raised to go on).",
                                 settable=True)
    batch_size = _loop_attribute("batch_size", "Captions per step.")
    num_train = _loop_attribute("num_train", "Training captions.")
    iterations_per_epoch = _loop_attribute("iterations_per_epoch", "Steps per epoch.")
    print_every = _loop_attribute("print_every", "Iterations between loss lines.")
    verbose = _loop_attribute("verbose", "Whether loss lines are printed.")
    stop_reason = _loop_attribute("stop_reason", "Why training ended early, else None.")

    @property
    def best_val_loss(self) -> float:
        """The best validation figure so far: the lowest loss, or in a self-critical run
        the highest greedy CIDEr-D (what picks best.npz)."""
        return self.early_stopping.best

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.run_folder is None else self.run_folder.path

    def _owning_folder(self) -> contextlib.AbstractContextManager:
        """The run folder's lock (RunFolderBusy if another process holds it)."""
        if self.run_folder is None:
            return contextlib.nullcontext()
        return self.run_folder.owned()

    def _last_good_checkpoint(self) -> str:
        if self.run_folder is not None and self.run_folder.checkpoint.exists():
            return f". The last good checkpoint is {self.run_folder.checkpoint}"
        return ""


CaptioningSolver = CaptioningTrainer
