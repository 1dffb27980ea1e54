"""The same captioning model in PyTorch (nn.LSTM, nn.Embedding, nn.Linear, Adam), for
reference timings only: the library never imports torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _set_tf32(torch, precision: str | None) -> None:
    """"fp32" turns TF32 off in cuDNN and in plain matmuls, "tf32" on; anything else
    leaves both as they are."""
    if precision in ("fp32", "tf32"):
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def torch_step(sizes, data: dict, device: str = "cpu", precision: str | None = None,
               packed: bool = False) -> Callable[[], None]:
    """One training step (forward, backward, Adam) of the PyTorch model, with the
    exercise's loss normalisation: summed over scored positions, divided by N.
    ``packed``: each batch sorted by caption length and run through
    ``pack_padded_sequence``, as a PyTorch captioning model skips its padding (the work
    of this library's packed step), the lengths read on the host once per batch.
    ``precision``: None keeps PyTorch's defaults (cuDNN may use TF32, plain matmuls do
    not); "fp32" forces full float32 everywhere; "tf32" allows TF32 everywhere; "bf16"
    runs the forward pass under ``torch.autocast`` in bfloat16 (float32 weights and
    Adam, as autocast does), leaving the TF32 settings as they are."""
    import torch
    from torch import nn

    if precision not in (None, "fp32", "tf32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; expected fp32, tf32 or bf16")
    _set_tf32(torch, precision)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")

    torch.manual_seed(0)
    dev = torch.device(device)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(sizes.D, sizes.H)
            self.embed = nn.Embedding(sizes.V, sizes.W)
            cell = nn.LSTM if sizes.cell == "lstm" else nn.RNN
            self.rnn = cell(sizes.W, sizes.H, batch_first=True)
            self.vocab = nn.Linear(sizes.H, sizes.V)

        def forward(self, features, captions, lengths=None):
            h0 = self.proj(features).unsqueeze(0)
            x = self.embed(captions[:, :-1])
            state = (h0, torch.zeros_like(h0)) if sizes.cell == "lstm" else h0
            target = captions[:, 1:]
            if lengths is None:
                h, _ = self.rnn(x, state)
                scores, target = self.vocab(h).reshape(-1, sizes.V), target.reshape(-1)
            else:  # the batch is sorted longest first
                pack = nn.utils.rnn.pack_padded_sequence
                h, _ = self.rnn(pack(x, lengths, batch_first=True), state)
                scores = self.vocab(h.data)
                target = pack(target, lengths, batch_first=True).data
            losses = nn.functional.cross_entropy(scores, target, reduction="none")
            return (losses * (target != 0)).sum() / captions.shape[0]

    model = Model().to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    features = torch.as_tensor(data["train_features"], device=dev)
    captions = torch.as_tensor(data["train_captions"].astype(np.int64), device=dev)
    image_idxs = torch.as_tensor(data["train_image_idxs"].astype(np.int64), device=dev)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(8):
        idx = rng.integers(0, len(captions), sizes.N)
        lengths = None
        if packed:  # each caption up to its last scored target, at least one step
            scored = data["train_captions"][idx, 1:] != 0
            lengths = np.maximum(scored.shape[1] - np.argmax(scored[:, ::-1], axis=1), 1)
            order = np.argsort(-lengths, kind="stable")
            idx, lengths = idx[order], torch.as_tensor(lengths[order])
        batches.append((torch.as_tensor(idx, device=dev), lengths))
    counter = iter(range(10**12))

    def step() -> None:
        idx, lengths = batches[next(counter) % len(batches)]
        optim.zero_grad(set_to_none=True)
        with autocast:
            loss = model(features[image_idxs[idx]], captions[idx], lengths)
        loss.backward()
        optim.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def torch_greedy(sizes, features: np.ndarray, device: str = "cpu",
                 precision: str | None = None) -> Callable[[], None]:
    """Greedy decoding of ``features`` for T steps with nn.LSTM (one step at a time).
    ``precision``: None keeps PyTorch's defaults (cuDNN may use TF32); "fp32" or "tf32"
    turns TF32 off or on everywhere."""
    import torch
    from torch import nn

    if precision not in (None, "fp32", "tf32"):
        raise ValueError(f"unknown precision {precision!r}; expected fp32 or tf32")

    torch.manual_seed(0)
    dev = torch.device(device)
    proj, embed = nn.Linear(sizes.D, sizes.H).to(dev), nn.Embedding(sizes.V, sizes.W).to(dev)
    lstm, vocab = nn.LSTM(sizes.W, sizes.H).to(dev), nn.Linear(sizes.H, sizes.V).to(dev)
    feats = torch.as_tensor(features, device=dev)

    @torch.no_grad()
    def run() -> None:
        _set_tf32(torch, precision)  # each call: another runner may have set them since
        h = proj(feats).unsqueeze(0)
        state = (h, torch.zeros_like(h))
        words = torch.ones(len(feats), dtype=torch.long, device=dev)
        out = []
        for _ in range(sizes.T):
            y, state = lstm(embed(words).unsqueeze(0), state)
            words = vocab(y[0]).argmax(dim=1)
            out.append(words)
        torch.stack(out, 1).cpu()

    return run
