"""torch.compile(fullgraph=True) traces dualstep from a cold cache: no graph break, no recompile."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import torch
    import dualstep as ds

    def if_step(x, v):
        h = v + x
        s = (h >= 1.0).to(x.dtype)
        return s, h * (1.0 - s)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, if_step, state=v)

    calls = {
        "multi_step": lambda x, v: ds.multi_step_forward(x, if_step, state=v),
        "t_last": lambda x, v: ds.t_last_multi_step_forward(x.movedim(0, -1), torch.sin),
        "chunk": lambda x, v: ds.chunk_multi_step_forward(2, x, chunk, state=v),
        "seq_to_ann": lambda x, v: ds.seq_to_ann_forward(x, torch.tanh),
        "t_last_seq_to_ann": lambda x, v: ds.t_last_seq_to_ann_forward(x, torch.tanh),
    }
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
    assert out.stdout.split() == [
        w
        for n in ("multi_step", "t_last", "chunk", "seq_to_ann", "t_last_seq_to_ann")
        for w in (n, "ok")
    ]
