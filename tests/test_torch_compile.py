"""torch.compile(fullgraph=True) traces dualstep from a cold cache: no graph break, no recompile."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dualstep.testing import FUNCTIONS

pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import torch
    from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, call_time_first, if_step

    step = if_step()

    def time_first(name):
        if name in STATEFUL_FUNCTIONS:
            return lambda x, v: call_time_first(name, step, x, state=v)
        return lambda x, v: call_time_first(name, torch.tanh, x)[0]

    calls = {name: time_first(name) for name in FUNCTIONS}
    x, v = torch.randn(5, 2, 3) + 0.5, torch.zeros(2, 3)
    for name, fn in calls.items():  # the first compiled call finds dualstep's caches cold
        compiled = torch.compile(fn, fullgraph=True)
        got = compiled(x, v)
        want = fn(x, v)  # eager: fills dualstep's caches
        torch.utils._pytree.tree_map(lambda a, b: torch.testing.assert_close(a, b), got, want)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled(x, v)  # warm caches must not invalidate the compiled code
        torch._dynamo.reset()
        breaks = torch._dynamo.explain(fn)(x, v).graph_break_count
        assert breaks == 0, (name, breaks)
        print(name, "ok")
    """
)


def test_fullgraph_compile_of_all_five_functions_from_a_cold_start():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [w for n in FUNCTIONS for w in (n, "ok")]


CHUNKS = textwrap.dedent(
    """
    import torch
    import dualstep as ds

    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4)

    def step(x, v):  # a Linear inside: no fused kernel, but a compiled chunk
        v = v + (linear(x) - v) / 2.0
        s = (v >= 0.5).to(x.dtype)
        return s, v * (1.0 - s)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    x, v = torch.randn(7, 3, 4), torch.zeros(3, 4)
    want = ds.multi_step_forward(x, step, state=v)
    for mode in (True, "reduce-overhead"):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                for _ in range(2):  # the second call reuses the compiled chunks
                    got = ds.chunk_multi_step_forward(3, x, chunk, state=v, compile=mode)
                    torch.utils._pytree.tree_map(torch.testing.assert_close, got, want)
            if grad:
                loss = got[0].sum() + got[1].square().sum()
                g = torch.autograd.grad(loss, linear.weight)[0]
                ref_loss = want[0].sum() + want[1].square().sum()
                ref = torch.autograd.grad(ref_loss, linear.weight, retain_graph=True)[0]
                torch.testing.assert_close(g, ref)
        print(mode, "ok")
    """
)


def test_compiled_chunks_equal_the_loop_with_and_without_grad():
    """``compile=`` runs each chunk through torch.compile (CUDA graphs with "reduce-overhead",
    which on CPU compiles without them; tests/test_cuda.py checks the graphs on a GPU)."""
    out = subprocess.run([sys.executable, "-c", CHUNKS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "ok", "reduce-overhead", "ok"]
