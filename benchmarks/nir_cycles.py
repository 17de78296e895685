"""Cycles in NIR graphs, dualstep against nirtorch: `python -m benchmarks.nir_cycles [--graphs N]`.

NIR's documentation does not say which edge of a cycle carries the previous step's value.
`dualstep.nir` decides it from the graph (docs, "NIR graphs"). nirtorch, the importer of
snnTorch, Norse and Sinabs, decides it by walking the graph's node dict, so its result can
depend on the order of the nodes. This draws random graphs of LI and Scale nodes with cycles,
self-loops and cycles entered at several nodes, runs each through nirtorch in every order of
its nodes and through dualstep once, and counts:

- the graphs where nirtorch's result does not depend on the node order, and among them those
  where dualstep gives that result (all of them, or the command exits 1);
- the graphs where it does, and among them those where dualstep's result is one of nirtorch's,
  and those where it is nirtorch's on the graph read back from a file (which sorts the nodes
  by name).

Needs torch, nir and nirtorch. The test `tests/test_nir.py` runs the same check on fewer graphs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from typing import Any

import nir
import numpy as np
import torch

import dualstep as ds
from dualstep.nir import load

X = np.linspace(0.3, 1.7, 6).reshape(6, 1, 1)  # [T, batch, 1]


def li(tau: float = 2.0) -> nir.LI:
    one = np.ones(1)
    return nir.LI(tau=one * tau, r=one, v_leak=0 * one)


def graph(nodes: dict, edges: list, node_order: list | None = None) -> nir.NIRGraph:
    """`nodes` (one neuron each) between an Input and an Output, the node dict in
    `node_order` (default: input, `nodes`, output)."""
    nodes = {"input": nir.Input(np.array([1])), **nodes, "output": nir.Output(np.array([1]))}
    order = node_order or list(nodes)
    return nir.NIRGraph(nodes={k: nodes[k] for k in order}, edges=list(edges))


def dualstep_run(g: nir.NIRGraph, x: np.ndarray = X) -> np.ndarray:
    model = load(g, dt=1.0)
    return ds.multi_step_forward(x, model.step, state=model.initial_state(x))[0]


class _LI(torch.nn.Module):
    """nir.LI for nirtorch (which maps no neuron itself): the equation dualstep.nir runs."""

    def __init__(self, node: nir.LI) -> None:
        super().__init__()
        self.k, self.r, self.v_leak = (
            torch.from_numpy(np.asarray(a, np.float64)) for a in (1 / node.tau, node.r, node.v_leak)
        )

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple:
        v = torch.zeros_like(x) if state is None else state
        v = v + (self.v_leak - v + self.r * x) * self.k
        return v, v


class _Scale(torch.nn.Module):
    def __init__(self, node: nir.Scale) -> None:
        super().__init__()
        self.scale = torch.from_numpy(np.asarray(node.scale, np.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def nirtorch_run(g: nir.NIRGraph, x: np.ndarray = X) -> np.ndarray:
    import nirtorch

    net = nirtorch.nir_to_torch(g, {nir.LI: _LI, nir.Scale: _Scale}, dtype=torch.float64)
    state, ys = None, []
    for xt in torch.from_numpy(x):
        y, state = net(xt, state)
        ys.append(y.numpy())
    return np.stack(ys)


def nirtorch_results(nodes: dict, edges: list, x: np.ndarray = X) -> set:
    """nirtorch's outputs (as tuples) over every order of the nodes in the node dict, the Input
    first (nirtorch's walk starts there) and a node named "sum" last (it feeds only the
    output, so its place changes nothing)."""
    middle = [n for n in nodes if n != "sum"]
    last = [n for n in nodes if n == "sum"]
    return {
        tuple(nirtorch_run(graph(nodes, edges, ["input", *o, *last, "output"]), x).ravel())
        for o in itertools.permutations(middle)
    }


def random_cyclic_graph(rng: np.random.Generator, max_nodes: int = 4) -> tuple[dict, list]:
    """2 to `max_nodes` LI and Scale nodes, each reached from the input or an earlier node,
    random further edges (cycles, self-loops, several entries into a cycle), and every node
    summed into the output through a node "sum", so that each node's timing shows."""
    names = [
        str(n) for n in rng.permutation(list("jkmnpqrtuvwz"))[: rng.integers(2, max_nodes + 1)]
    ]
    nodes: dict = {
        n: li(rng.choice([2.0, 3.0])) if rng.random() < 0.5 else nir.Scale(np.array([0.5]))
        for n in names
    }
    nodes["sum"] = nir.Scale(scale=np.array([1.0]))
    edges = {(str(rng.choice(["input", *names[:i]])), n) for i, n in enumerate(names)}
    for _ in range(rng.integers(0, 2 * len(names) + 1)):
        edges.add((str(rng.choice(["input", *names])), str(rng.choice(names))))
    edges |= {(n, "sum") for n in names} | {("sum", "output")}
    return nodes, sorted(edges)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nir_cycles", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--graphs", type=int, default=100)
    parser.add_argument("--max-nodes", type=int, default=5, help="nodes besides input, sum, output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    fixed = agree = cyclic = varies = among = as_file = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.graphs):
            nodes, edges = random_cyclic_graph(rng, args.max_nodes)
            ours = tuple(dualstep_run(graph(nodes, edges)).ravel())
            theirs = nirtorch_results(nodes, edges)
            if len(theirs) == 1:
                fixed += 1
                agree += np.allclose(ours, next(iter(theirs)), rtol=1e-12, atol=0)
                cyclic += bool(load(graph(nodes, edges), dt=1.0).recurrent)
                continue
            varies += 1
            among += any(np.allclose(ours, t, rtol=1e-12, atol=0) for t in theirs)
            path = os.path.join(tmp, "g.nir")
            nir.write(path, graph(nodes, edges))
            as_file += np.allclose(ours, nirtorch_run(nir.read(path)).ravel(), rtol=1e-12, atol=0)
    print(
        f"{args.graphs} random graphs (2 to {args.max_nodes} LI/Scale nodes, seed {args.seed}), "
        f"nirtorch in every order of the nodes against dualstep once:\n"
        f"  nirtorch's result does not depend on the node order: {fixed} graphs ({cyclic} with "
        f"cycles); dualstep gives it on {agree}\n"
        f"  it does: {varies} graphs; dualstep's result is one of nirtorch's on {among}, and "
        f"nirtorch's on the graph read from a file on {as_file}"
    )
    return 0 if agree == fixed else 1


if __name__ == "__main__":
    sys.exit(main())
