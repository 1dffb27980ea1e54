"""First-order update rules, each ``rule(w, dw, config=None) -> (next_w, config)``.

As in the exercise, a rule returns the next weights and leaves ``w`` alone; the trainer
passes ``inplace=True`` to update the weights and the rule's state buffers in place (no
copies per step). Adam runs through ``Backend.adam_update``, which a backend may fuse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import Backend, backend_for
from backend.base import adam_scalars

DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "t": 0},
}


def _setup(name: str, w, config: dict | None, inplace: bool, backend: Backend | None):
    config = {} if config is None else config
    for key, value in DEFAULTS[name].items():
        config.setdefault(key, value)
    be = backend if backend is not None else backend_for(w)
    return (w if inplace else w.copy()), config, be


def _state(config: dict, key: str, w, be: Backend, inplace: bool):
    """The rule's state buffer ``key`` (zeros like w at first), copied unless in place."""
    if key not in config:
        config[key] = be.xp.zeros_like(w)
    elif not inplace:
        config[key] = config[key].copy()
    return config[key]


def sgd(w, dw, config=None, *, inplace: bool = False, backend: Backend | None = None):
    """Vanilla SGD: w -= learning_rate * dw."""
    w, config, be = _setup("sgd", w, config, inplace, backend)
    w -= config["learning_rate"] * dw
    return w, config


def sgd_momentum(w, dw, config=None, *, inplace: bool = False, backend: Backend | None = None):
    """SGD with momentum: v = momentum * v - lr * dw; w += v."""
    w, config, be = _setup("sgd_momentum", w, config, inplace, backend)
    v = _state(config, "velocity", w, be, inplace)
    v *= config["momentum"]
    v -= config["learning_rate"] * dw
    w += v
    return w, config


def rmsprop(w, dw, config=None, *, inplace: bool = False, backend: Backend | None = None):
    """RMSProp: a running average of squared gradients scales each step."""
    w, config, be = _setup("rmsprop", w, config, inplace, backend)
    cache = _state(config, "cache", w, be, inplace)
    rate = config["decay_rate"]
    cache *= rate
    cache += (1 - rate) * (dw * dw)
    w -= config["learning_rate"] * dw / (be.xp.sqrt(cache) + config["epsilon"])
    return w, config


def adam(w, dw, config=None, *, inplace: bool = False, backend: Backend | None = None):
    """Adam with bias correction; ``config['t']`` counts steps from 0."""
    w, config, be = _setup("adam", w, config, inplace, backend)
    m = _state(config, "m", w, be, inplace)
    v = _state(config, "v", w, be, inplace)
    config["t"] += 1
    be.adam_update(w, dw, m, v, config["t"], config["learning_rate"], config["beta1"],
                   config["beta2"], config["epsilon"])
    return w, config


def adam_table(configs: list[dict], dtype: Any) -> np.ndarray:
    """(len(configs), 4) host table of the next Adam step's (step size, eps_hat, beta1,
    beta2) for each parameter's config, whose ``t`` is not yet incremented: what
    ``Backend.adam_update_device`` reads."""
    rows = [(*adam_scalars(c["t"] + 1, c["learning_rate"], c["beta1"], c["beta2"],
                           c["epsilon"]), c["beta1"], c["beta2"]) for c in configs]
    return np.array(rows, dtype=dtype).reshape(len(configs), 4)


UPDATE_RULES: dict[str, Any] = {
    "sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam,
}


def get_update_rule(name: str):
    """The rule called ``name``; ValueError listing the known ones otherwise."""
    if name not in UPDATE_RULES:
        raise ValueError(
            f"unknown update rule {name!r}; expected one of: {', '.join(UPDATE_RULES)}"
        )
    return UPDATE_RULES[name]
