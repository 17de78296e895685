"""What the two training examples share: the data, the LIF step with a surrogate gradient, the
torch model, and the forward pass written once against the array API.

The model: Linear(N_IN, HIDDEN) at every time step, LIF neurons (tau=2, hard reset), the firing
rate over time, Linear(HIDDEN, CLASSES), softmax cross-entropy. The spike is a Heaviside step
in the forward pass; its gradient is that of a sigmoid (a surrogate gradient), written as
``heaviside + sigmoid - stop_gradient(sigmoid)`` so one expression serves torch and JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import array_namespace

import dualstep as ds

T, BATCH, N_IN, HIDDEN, CLASSES = 16, 32, 20, 24, 2
STEPS, LEARNING_RATE, SEED = 30, 0.5, 0


def data() -> tuple[np.ndarray, np.ndarray]:
    """Spike trains ``[T, BATCH, N_IN]`` (float32) whose rates tell the class, and labels."""
    rng = np.random.default_rng(SEED)
    labels = rng.integers(0, CLASSES, BATCH)
    rates = np.where(labels[:, None] == 1, np.linspace(0.1, 0.6, N_IN), np.linspace(0.6, 0.1, N_IN))
    spikes = rng.random((T, BATCH, N_IN)) < rates
    return spikes.astype(np.float32), labels


def lif_surrogate(stop_gradient: Callable[[Any], Any], alpha: float = 4.0) -> Callable:
    """A LIF step ``(x, v) -> (spike, v)`` whose spike has a sigmoid surrogate gradient."""

    def step(x: Any, v: Any) -> tuple[Any, Any]:
        xp = array_namespace(x)
        h = v + (x - v) / 2.0
        smooth = 1.0 / (1.0 + xp.exp(-alpha * (h - 1.0)))
        spike = xp.astype(h >= 1.0, h.dtype) + (smooth - stop_gradient(smooth))
        return spike, h * (1.0 - stop_gradient(spike))

    return step


def forward(params: dict, x_seq: Any, step: Callable, xp: Any) -> Any:
    """Logits ``[BATCH, CLASSES]``; `params` holds "0.weight", "0.bias", "1.weight", "1.bias"."""
    current = ds.seq_to_ann_forward(x_seq, lambda x: x @ xp.matrix_transpose(params["0.weight"]))
    v0 = xp.zeros((x_seq.shape[1], HIDDEN), dtype=x_seq.dtype)
    spikes, _ = ds.multi_step_forward(current + params["0.bias"], step, state=v0)
    rate = xp.mean(spikes, axis=0)
    return rate @ xp.matrix_transpose(params["1.weight"]) + params["1.bias"]


def cross_entropy(logits: Any, labels: Any, xp: Any) -> Any:
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    picked = xp.take_along_axis(log_probs, labels[:, None], axis=1)
    return -xp.mean(picked)


def torch_model() -> Any:
    """The torch module whose parameters both examples start from (seeded)."""
    import torch

    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(N_IN, HIDDEN), torch.nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():  # inputs strong enough for the neurons to fire from the start
        torch.nn.init.normal_(model[0].weight, 0.0, 0.5)
    return model


def train_torch(model: Any, x: np.ndarray, labels: np.ndarray) -> list[float]:
    """Plain full-batch SGD in torch; returns the loss before each update."""
    import torch

    x_t, y_t = torch.from_numpy(x), torch.from_numpy(labels)
    xp = array_namespace(x_t)
    step = lif_surrogate(lambda a: a.detach())
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        params = dict(model.named_parameters())
        loss = cross_entropy(forward(params, x_t, step, xp), y_t, xp)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
