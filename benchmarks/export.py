"""Exported time loops against the eager call: `python -m benchmarks.export [--quick]`.

The network of ``examples/train_torch.py`` (Linear 20 -> 24 at every step, LIF with a sigmoid
surrogate, the firing rate, Linear 24 -> 2; ``examples/snn_common.py``), its forward pass at the
example's batch (32) and two sequence lengths, one export for both:

- torch: ONNX Runtime (CPU) running the program of ``torch.onnx.export(torch.export.export(...),
  dynamo=True)`` against the eager torch call (report, no bound), and the sizes of the ONNX
  file and of the ``torch.export.save`` archive;
- JAX: the program of ``jax.export`` (symbolic ``T`` and batch, serialized and deserialized)
  against ``jax.jit`` of the same call; the bound is 1.05.

Each pair is checked equal before timing (spikes identical, logits within 1e-5 relative);
best of interleaved rounds. Writes ``benchmarks/results/export.md``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .run import publish, time_side_by_side

JAX_BOUND = 1.05
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _snn() -> Any:
    sys.path.insert(0, str(EXAMPLES))
    import snn_common

    return snn_common


def _inputs(t: int, batch: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    return (rng.random((t, batch, _snn().N_IN)) < 0.4).astype(np.float32)


def _close(got: Any, want: Any) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30), (got, want)


def torch_rows(steps: list[int], batch: int, budget: float) -> list[str]:
    import onnxruntime
    import torch
    from array_api_compat import array_namespace

    from dualstep.export import dynamic_shapes

    snn = _snn()
    model = snn.torch_model().eval()
    step = snn.lif_surrogate(lambda a: a.detach())

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = model

        def forward(self, x_seq: Any) -> Any:
            params = dict(self.layers.named_parameters())
            return snn.forward(params, x_seq, step, array_namespace(x_seq))

    net = Network().eval()
    example = torch.from_numpy(_inputs(steps[0], batch))
    with warnings.catch_warnings():  # what torch 2.13 warns while it exports (docs, "Deploying")
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes(example))
    archive = io.BytesIO()
    torch.export.save(program, archive)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = Path(folder) / "snn.onnx"
        torch.onnx.export(
            program, f=str(onnx_path), dynamo=True, verbose=False, external_data=False
        )
        onnx_bytes = onnx_path.read_bytes()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for t in steps:
        x = _inputs(t, batch)
        x_t = torch.from_numpy(x)

        def eager(x_t: Any = x_t) -> Any:
            with torch.no_grad():
                return net(x_t)

        def onnx(x: np.ndarray = x) -> Any:
            return session.run(None, {name: x})[0]

        _close(onnx(), eager().numpy())
        seconds = time_side_by_side([onnx, eager], budget, rounds=9)
        rows.append(
            f"| torch, T={t}, batch {batch} | ONNX Runtime (CPU) {seconds[0] * 1e3:.3f} ms | "
            f"eager torch {seconds[1] * 1e3:.3f} ms | {seconds[0] / seconds[1]:.2f} | none | - |"
        )
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    rows.append(
        f"| torch, sizes | ONNX file {len(onnx_bytes)} bytes | torch.export.save "
        f"{len(archive.getvalue())} bytes | parameters {params} bytes | none | - |"
    )
    return rows


def jax_rows(steps: list[int], batch: int, budget: float) -> list[str]:
    import jax
    import jax.numpy as jnp

    from dualstep.export import symbolic_args

    snn = _snn()
    model = snn.torch_model()
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in model.named_parameters()}
    step = snn.lif_surrogate(jax.lax.stop_gradient)

    def forward(x_seq: Any) -> Any:
        return snn.forward(params, x_seq, step, jnp)

    jitted = jax.jit(forward)
    example = _inputs(steps[0], batch)
    exported = jax.export.export(jitted)(*symbolic_args(example))
    # As a deployment calls it: deserialized, its `call` jitted (compiled once per shape, as
    # `jitted` is; an unjitted `call` dispatches through a trace at every call).
    program = jax.jit(jax.export.deserialize(exported.serialize()).call)
    rows = []
    for t in steps:
        x = jnp.asarray(_inputs(t, batch))
        _close(program(x), jitted(x))
        seconds = time_side_by_side([lambda x=x: program(x), lambda x=x: jitted(x)], budget, 9)
        ratio = seconds[0] / seconds[1]
        rows.append(
            f"| JAX, T={t}, batch {batch} | exported {seconds[0] * 1e3:.3f} ms | "
            f"jax.jit {seconds[1] * 1e3:.3f} ms | {ratio:.2f} | <= {JAX_BOUND} | "
            f"{'met' if ratio <= JAX_BOUND else 'not met'} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="short timings")
    args = parser.parse_args(argv)
    steps, batch = [_snn().T, 256], _snn().BATCH
    budget = 0.05 if args.quick else 1.5
    lines = [
        "# Exported time loops against the eager call (the network of examples/train_torch.py)",
        "",
        "One export per framework for both T; best of interleaved rounds, 2-core CPU; "
        "`python -m benchmarks.export`",
        "",
        "| case | exported | eager | ratio | bound | met |",
        "|---|---|---|---|---|---|",
        *torch_rows(steps, batch, budget),
        *jax_rows(steps, batch, budget),
    ]
    publish("export", "\n".join(lines), write=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
