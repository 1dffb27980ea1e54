"""One training step on data that lives on the device:

    sort the batch longest first -> gather it -> loss and gradients -> reduce_gradients
    -> clip -> update

``reduce_gradients`` is where a data-parallel run sums the gradients of the whole batch
across processes; alone, there is nothing to reduce. On a backend that can record (CuPy)
and with Adam, the step is recorded once as a CUDA graph and replayed, so a small batch
is not paced by the host issuing ~100 kernels. The batch is computed packed
(captioning/packing.py): its indices are sorted on the host by their captions' scored
lengths, so each time step computes only the captions still scored; a recording
computes a fixed number of rows per step that covers a batch drawn at random.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend import RecordingFailed
from captioning.data.layout import check_word_indices
from captioning.model import CaptioningRNN
from captioning.optim import adam_table, get_update_rule
from captioning.packing import Packing, capacity, covers, longest_first, scored_lengths

# (loss, gradients keyed like the parameters) of this process's share of the batch ->
# the loss of the whole batch, with the gradients of the whole batch left in place.
GradientReducer = Callable[[Any, dict[str, Any]], Any]


@dataclass
class DeviceData:
    """The training split on the model's backend, moved there once: features (images, D)
    in the model's dtype, captions (M, T+1) and image_idxs (M,) integers; and on the
    host each caption's scored length (M,) (captioning/packing.py)."""

    features: Any
    captions: Any
    image_idxs: Any
    lengths: np.ndarray

    @classmethod
    def from_split(cls, model: CaptioningRNN, data: dict[str, Any]) -> DeviceData:
        """Check the 'train_' arrays of ``data`` against ``model`` and move them."""
        features = data["train_features"]
        if features.ndim != 2 or features.shape[1] != model.input_dim:
            raise ValueError(f"train_features have shape {features.shape}; the model expects "
                             f"(images, {model.input_dim})")
        captions = np.asarray(data["train_captions"])
        image_idxs = np.asarray(data["train_image_idxs"])
        if len(captions) == 0 or len(captions) != len(image_idxs):
            raise ValueError(f"{len(captions)} train_captions and {len(image_idxs)} "
                             "train_image_idxs: expected the same, non-zero number")
        if captions.ndim != 2 or captions.shape[1] < 2:
            raise ValueError(f"train_captions have shape {captions.shape}; expected "
                             "(captions, T+1) with T >= 1")
        check_word_indices(captions, model.vocab_size, "train_captions")
        if image_idxs.min() < 0 or image_idxs.max() >= len(features):
            raise ValueError(f"train_image_idxs reach {int(image_idxs.max())}, but there are "
                             f"only {len(features)} feature rows")
        be = model.backend
        return cls(be.asarray(features, dtype=model.dtype), be.asarray(captions),
                   be.asarray(image_idxs),
                   scored_lengths(captions, model.word_to_idx["<NULL>"]))

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def steps(self) -> int:
        """T, the time steps of a caption."""
        return int(self.captions.shape[1]) - 1

    def longest_first(self, batch_idx: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """Host caption indices -> (the same sorted by scored length, longest first;
        how many of them are still scored at each time step)."""
        order, step_rows = longest_first(self.lengths[batch_idx], self.steps)
        return batch_idx[order], step_rows


class TrainingStep:
    """``step(batch_idx)`` updates ``model.params`` in place from the captions
    ``batch_idx`` (host integers) and returns the loss, a 0-d device array.

    ``configs`` holds each parameter's update-rule settings and state (learning_rate,
    Adam's m, v and t, ...), keyed like the parameters.

    cuda_graph: with Adam, on a backend that can record, step 1 runs op by op and makes
    Adam's buffers; step 2 runs op by op inside the recording's own memory pool (so its
    blocks exist and every kernel is compiled); step 3 is recorded and launched; later
    steps replay the recording. It is recorded again whenever a step would act on other
    arrays (new parameter or Adam arrays after a restore, another batch shape or clip
    value) or on a batch with more captions scored at some time step than the recording
    computes (see ``captioning.packing.capacity``). If recording fails, a RuntimeWarning
    says why and every later step runs op by op; no step is lost or repeated.
    """

    def __init__(self, model: CaptioningRNN, data: DeviceData, update_rule: str = "adam",
                 updater_config: dict[str, Any] | None = None, grad_clip: float | None = None,
                 cuda_graph: bool = True, reduce_gradients: GradientReducer | None = None,
                 share_batch: Callable[[Any], Any] | None = None) -> None:
        self.model, self.data = model, data
        self.update_rule_name = update_rule
        self.update_rule = get_update_rule(update_rule)
        self.configs = {name: dict(updater_config or {}) for name in model.params}
        self.grad_clip = grad_clip
        self.cuda_graph = cuda_graph
        self.reduce_gradients = reduce_gradients
        self.share_batch = share_batch  # this process's part of each batch (data-parallel)
        self.graph: StepGraph | None = None
        self.recording_off: str | None = None  # why recording failed, once it has

    def __call__(self, batch_idx: Any) -> Any:
        """One step from the captions ``batch_idx`` (host integers; device ones are
        copied to the host, a synchronisation), sorted here longest first."""
        be = self.model.backend
        batch_idx = np.asarray(be.to_numpy(batch_idx) if be.owns(batch_idx) else batch_idx,
                               dtype=np.int64)
        if self.share_batch is not None:
            batch_idx = self.share_batch(batch_idx)
        batch_idx, step_rows = self.data.longest_first(batch_idx)
        if self._recordable():
            return self._replay(batch_idx, step_rows)
        return self.run(be.asarray(batch_idx), Packing.of(step_rows, be), self._rule_update)

    def run(self, batch_idx: Any, packing: Packing,
            update: Callable[[dict[str, Any]], None]) -> Any:
        """The step's device work, op by op, on the captions ``batch_idx`` (a device
        integer array, sorted longest first) laid out by ``packing``, with
        ``update(grads)`` updating every parameter; returns the loss (device)."""
        captions = self.data.captions[batch_idx]
        features = self.data.features[self.data.image_idxs[batch_idx]]
        loss, grads = self.model.loss(features, captions, packing=packing)
        return self.descend(loss, grads, update)

    def descend(self, loss: Any, grads: dict[str, Any],
                update: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """From a batch's loss and gradients on: reduce, clip, and ``update(grads)`` the
        parameters (default: the update rule, op by op); returns the (reduced) loss.
        The part of a step that every objective shares (self-critical training's too)."""
        model = self.model
        if self.reduce_gradients is not None:
            loss = self.reduce_gradients(loss, grads)
        if self.grad_clip is not None:
            clip_global_norm(grads, self.grad_clip, model.backend.xp)
        (update or self._rule_update)(grads)
        return loss

    def learning_rate(self) -> float:
        """The current learning rate (every parameter has the same)."""
        return float(next(iter(self.configs.values())).get("learning_rate", 0))

    def decay_learning_rate(self, factor: float) -> None:
        for config in self.configs.values():
            config["learning_rate"] = config.get("learning_rate", 0) * factor

    def _rule_update(self, grads: dict[str, Any]) -> None:
        for name, w in self.model.params.items():
            self.update_rule(w, grads[name], self.configs[name], inplace=True,
                             backend=self.model.backend)

    def _recordable(self) -> bool:
        return (self.cuda_graph and self.model.backend.can_record
                and self.update_rule_name == "adam" and self.recording_off is None
                and all("m" in c for c in self.configs.values()))

    def _replay(self, batch_idx: np.ndarray, step_rows: tuple[int, ...]) -> Any:
        """The step through the recording: this step's batch and Adam scalars go into
        the recording's fixed input arrays, then one replay does the rest. A batch with
        more captions scored at some step than the recording computes is recorded
        anew, with room for it."""
        be, model = self.model.backend, self.model
        configs = [self.configs[name] for name in model.params]
        arrays = [self.data.features, self.data.captions, self.data.image_idxs,
                  *model.params.values(), *(c[key] for c in configs for key in ("m", "v"))]
        if self.graph is None or not self.graph.fits(arrays, batch_idx, step_rows,
                                                     self.grad_clip):
            grown = (step_rows if self.graph is None else
                     tuple(max(a, b) for a, b in zip(step_rows, self.graph.packing.step_rows)))
            rows = capacity(self.data.lengths, len(batch_idx), self.data.steps, grown)
            self.graph = StepGraph(self, arrays, len(batch_idx), Packing.of(rows, be))
        be.upload(self.graph.hyper, adam_table(configs, model.dtype))
        be.upload(self.graph.batch, batch_idx)
        try:
            loss = self.graph.recording()
        except RecordingFailed as exc:  # nothing of this step has run
            self.recording_off, self.graph = str(exc), None
            warnings.warn(f"{exc}; training goes on op by op", RuntimeWarning, stacklevel=3)
            return self.run(be.asarray(batch_idx), Packing.of(step_rows, be),
                            self._rule_update)
        for config in configs:
            config["t"] += 1
        return loss.copy()  # the recording's own loss array is overwritten by the next replay


class StepGraph:
    """A step recorded for replay (``Backend.record``): its fixed input arrays (the
    batch's caption indices, sorted longest first; Adam's scalars, one row per
    parameter), the packing whose rows it computes at each time step, and the arrays
    it was recorded against, held so that their memory stays theirs."""

    def __init__(self, step: TrainingStep, arrays: list, batch: int, packing: Packing
                 ) -> None:
        be, model = step.model.backend, step.model
        self.arrays, self.grad_clip, self.packing = arrays, step.grad_clip, packing
        self.batch = be.xp.zeros(batch, dtype=np.int64)
        self.hyper = be.xp.empty((len(model.params), 4), dtype=model.dtype)
        configs = step.configs

        def update(grads: dict[str, Any]) -> None:  # row i of hyper is parameter i's
            be.adam_update_device_many(
                [(w, grads[name], configs[name]["m"], configs[name]["v"])
                 for name, w in model.params.items()], self.hyper)

        self.recording = be.record(lambda: step.run(self.batch, packing, update))

    def fits(self, arrays: list, batch_idx: np.ndarray, step_rows: tuple[int, ...],
             grad_clip: float | None) -> bool:
        """Whether a replay would act on these arrays, this batch size and clipping, and
        compute every caption that ``step_rows`` says is scored."""
        return (grad_clip == self.grad_clip and batch_idx.shape == self.batch.shape
                and covers(self.packing.step_rows, step_rows)
                and len(arrays) == len(self.arrays)
                and all(a is b for a, b in zip(arrays, self.arrays)))


def clip_global_norm(grads: dict[str, Any], max_norm: float, xp: Any) -> None:
    """Scale every gradient in place so that their global L2 norm is at most
    ``max_norm``; no host sync (a NaN norm gives a NaN scale, which the next loss shows)."""
    norm = xp.sqrt(sum((g * g).sum() for g in grads.values()))
    scale = max_norm / xp.maximum(norm, max_norm)
    for g in grads.values():
        g *= scale.astype(g.dtype)
