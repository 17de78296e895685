"""On a GPU: outputs stay on the input's device, no host sync in the time loop, CUDA == CPU.

Every test here is skipped when no GPU is present (never failing for it); on a GPU machine run
`bash scripts/gpu_check.sh`, which runs these and the quick benchmark on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualstep as ds
from dualstep._tree import leaves_with_path
from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, call_time_first, lif_step

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"),
]
STEP = lif_step(spike="sigmoid")


def _calls(checkpoint=False):
    """Each function time first, the stateful ones from a zero state, and the module path."""

    def time_first(name):
        if name not in STATEFUL_FUNCTIONS:
            return lambda x: call_time_first(name, torch.tanh, x)
        options = {"checkpoint": checkpoint} if name == "chunk_multi_step_forward" else {}

        def fn(x):
            zeros = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
            return call_time_first(name, STEP, x, state=zeros, split_size=3, **options)

        return fn

    calls = {name: time_first(name) for name in FUNCTIONS}
    calls["module_path"] = lambda x: ds.multi_step_forward(x, [torch.nn.Tanh(), torch.nn.ReLU()])
    return calls


def _leaves(out):
    return [leaf for _, leaf in leaves_with_path(out, "") if leaf is not None]


@pytest.mark.parametrize("mode", ["grad", "no_grad", "checkpoint"])
@pytest.mark.parametrize("name", list(_calls()))
def test_torch_cuda_stays_on_device_without_sync_and_matches_cpu(name, mode):
    fn = _calls(checkpoint=mode == "checkpoint")[name]
    x_cpu = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 4, 5)) + 0.5).float()
    x = x_cpu.cuda().requires_grad_(mode != "no_grad")
    torch.cuda.synchronize()
    with torch.set_grad_enabled(mode != "no_grad"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = fn(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        want = fn(x_cpu)
    for got, ref in zip(_leaves(out), _leaves(want), strict=True):
        assert got.device == x.device
        torch.testing.assert_close(got.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-6)
    if mode != "no_grad":
        y = _leaves(out)[0]
        (g,) = torch.autograd.grad(y.square().sum(), x)
        xg = x_cpu.clone().requires_grad_()
        (g_cpu,) = torch.autograd.grad(_leaves(fn(xg))[0].square().sum(), xg)
        assert g.device == x.device
        torch.testing.assert_close(g.cpu(), g_cpu, rtol=1e-4, atol=1e-5)


def test_jax_gpu_matches_cpu():
    jax = pytest.importorskip("jax")
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("JAX has no GPU here")
    jnp = jax.numpy
    x = np.random.default_rng(0).normal(size=(8, 4, 5)).astype(np.float32) + 0.5
    v = np.zeros((4, 5), np.float32)
    on_gpu = ds.multi_step_forward(jax.device_put(x, gpus[0]), STEP, state=jnp.asarray(v))
    cpu = jax.devices("cpu")[0]
    on_cpu = ds.multi_step_forward(jax.device_put(x, cpu), STEP, state=jax.device_put(v, cpu))
    assert on_gpu[0].devices() == {gpus[0]}
    np.testing.assert_allclose(np.asarray(on_gpu[0]), np.asarray(on_cpu[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", [False, True])
def test_reduce_overhead_chunks_equal_the_loop(grad):
    """compile="reduce-overhead" replays a CUDA graph per chunk; each chunk's outputs are
    copied out before the next replay overwrites them."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 5).cuda()

    def step(x, v):
        return STEP(linear(x), v)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    x = torch.randn(10, 4, 5, device="cuda")
    v0 = torch.zeros(4, 5, device="cuda")
    with torch.set_grad_enabled(grad):
        want = ds.multi_step_forward(x, step, state=v0)
        for _ in range(3):  # warm-up, recording, replays
            got = ds.chunk_multi_step_forward(4, x, chunk, state=v0, compile="reduce-overhead")
            for a, b in zip(_leaves(got), _leaves(want), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if grad:
        (g,) = torch.autograd.grad(got[0].sum() + got[1].sum(), linear.weight)
        (ref,) = torch.autograd.grad(want[0].sum() + want[1].sum(), linear.weight)
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)
