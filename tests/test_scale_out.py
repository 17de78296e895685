"""Scale-out on existing engines, on this CPU: JAX batch sharding and torch DDP over gloo.

Each runs in a fresh interpreter, so the virtual device count and the process group stay out of
the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS

JAX_SHARDING = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from dualstep.testing import (
        FUNCTIONS, STATEFUL_FUNCTIONS, TIME_LAST_FUNCTIONS, affine_tanh, call, lif_step
    )

    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    step, dense = lif_step(), affine_tanh()

    def in_layout(name):  # each function in its own layout, the batch axis sharded
        stateful = name in STATEFUL_FUNCTIONS
        fn = lambda x, v: call(name, step if stateful else dense, x, state=v if stateful else None,
                               split_size=3)
        return fn, P("batch") if name in TIME_LAST_FUNCTIONS else P(None, "batch")

    calls = {name: in_layout(name) for name in FUNCTIONS}
    rng = np.random.default_rng(0)
    x_tbn = (rng.integers(-16, 17, (10, 8, 6)) / 8).astype(np.float32)
    v = np.zeros((8, 6), np.float32)
    collectives = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
    for name, (fn, spec) in calls.items():
        x = x_tbn if spec == P(None, "batch") else np.moveaxis(x_tbn, 0, -1).copy()
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        vs = jax.device_put(v, NamedSharding(mesh, P("batch")))
        jitted = jax.jit(fn)
        out = jitted(xs, vs)
        want = fn(jnp.asarray(x), jnp.asarray(v))  # unsharded, one device
        for got, ref in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        y = jax.tree.leaves(out)[0]
        assert y.sharding.is_equivalent_to(NamedSharding(mesh, spec), y.ndim), (name, y.sharding)
        if isinstance(out, tuple):  # the final state keeps the state's batch sharding
            final = out[1]
            assert final.sharding.is_equivalent_to(vs.sharding, final.ndim), (name, final.sharding)
        hlo = jitted.lower(xs, vs).compile().as_text()
        found = [c for c in collectives if c in hlo]
        assert not found, (name, found)
        print(name, "ok")
    # lengths=, sharded with the batch: the masked loop keeps the sharding, no collective.
    lengths = np.array([10, 0, 3, 7, 1, 10, 5, 2], np.int32)
    ls = jax.device_put(lengths, NamedSharding(mesh, P("batch")))
    for name in STATEFUL_FUNCTIONS:
        _, spec = calls[name]
        fn = lambda x, v, n, name=name: call(name, step, x, state=v, split_size=3, lengths=n)
        x = x_tbn if spec == P(None, "batch") else np.moveaxis(x_tbn, 0, -1).copy()
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        vs = jax.device_put(v, NamedSharding(mesh, P("batch")))
        jitted = jax.jit(fn)
        out = jitted(xs, vs, ls)
        want = fn(jnp.asarray(x), jnp.asarray(v), jnp.asarray(lengths))
        for got, ref in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        assert out[0].sharding.is_equivalent_to(NamedSharding(mesh, spec), out[0].ndim), name
        assert out[1].sharding.is_equivalent_to(vs.sharding, out[1].ndim), name
        hlo = jitted.lower(xs, vs, ls).compile().as_text()
        found = [c for c in collectives if c in hlo]
        assert not found, (name, "lengths", found)
        print(name + "+lengths", "ok")
    """
)


def _run(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_jax_batch_sharding_is_kept_without_collectives():
    pytest.importorskip("jax")
    out = _run(JAX_SHARDING, {"JAX_PLATFORMS": "cpu"})  # four host devices, on a GPU machine too
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split() == [w for n in FUNCTIONS for w in (n, "ok")] + [
        w for n in STATEFUL_FUNCTIONS for w in (n + "+lengths", "ok")
    ]


DDP = textwrap.dedent(
    """
    import os, tempfile
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.nn.parallel import DistributedDataParallel
    import dualstep as ds
    from dualstep.testing import lif_step

    T, B, N, H = 6, 8, 5, 4

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(N, H)
            self.neuron = lif_step(spike="sigmoid")

        def forward(self, x):
            def step(xt, v):
                return self.neuron(self.linear(xt), v)

            v0 = torch.zeros(x.shape[1], H)
            y, v = ds.multi_step_forward(x, step, state=v0)
            return y.mean(0) + v

    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(T, B, N, generator=g) + 0.5, torch.rand(B, H, generator=g)

    def loss_of(model, x, target):
        return ((model(x) - target) ** 2).mean()

    def worker(rank, world, folder):
        # A file store: no rank hosts a TCP store that the other could outlive.
        store = "file://" + os.path.join(folder, "store")
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
        model = Net()
        ddp = DistributedDataParallel(model)
        x, target = data()
        part = slice(rank * B // world, (rank + 1) * B // world)  # this rank's batch shard
        loss_of(ddp, x[:, part], target[part]).backward()
        if rank == 0:
            grads = {n: p.grad for n, p in model.named_parameters()}
            torch.save(grads, os.path.join(folder, "grads.pt"))
        # Both ranks leave together: a rank that tears gloo down while its peer still runs was
        # seen to abort ("terminate called without an active exception", 2 runs in 15).
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        folder = tempfile.mkdtemp()
        mp.spawn(worker, args=(2, folder), nprocs=2, join=True)
        ddp_grads = torch.load(os.path.join(folder, "grads.pt"))
        model = Net()
        x, target = data()
        loss_of(model, x, target).backward()  # one process, the full batch
        for name, p in model.named_parameters():
            torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-6, atol=1e-7)
            assert p.grad.abs().sum() > 0, name
            print(name, "ok")
    """
)


def test_torch_ddp_gradients_equal_full_batch(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "ddp_check.py"  # spawn re-imports the main module: it must be a file
    script.write_text(DDP)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split() == ["linear.weight", "ok", "linear.bias", "ok"]
