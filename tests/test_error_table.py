"""Every row of the docs' table of rejected inputs (docs/errors.md), on every backend it applies to.

The table is the documentation; this file holds one bad call per row and checks the exception
type and the whole message against the row (``...`` matches the received value).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from support import ERROR_ROWS, MAKERS, error_pattern

import dualstep as ds
from dualstep.nir import UnsupportedNode
from dualstep.testing import BACKENDS, assert_backends_close, lif_step


def _ident(x):
    return x


def _other_kind(backend_name, a):
    """`a` as an array of another backend than `backend_name`."""
    if backend_name == "torch":
        return np.asarray(a)
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.asarray(a))


def _spikingjelly_memory_module(b):
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    x = b.asarray(np.ones((4, 2)))
    return ds.chunk_multi_step_forward(2, x, neuron.LIFNode(step_mode="m"), checkpoint=True)


def _wrong_step_mode(b):
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    return ds.multi_step_forward(b.asarray(np.ones((4, 2))), neuron.LIFNode(step_mode="m"))


def _fused_memory_module(b):
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    return ds.multi_step_forward(b.asarray(np.ones((4, 2))), neuron.IFNode(), fused=True)


def _nir_graph(defect):
    """`dualstep.nir.load` of a small graph with one defect."""
    nir = pytest.importorskip("nir")
    from dualstep.nir import load

    ones = np.ones(2)
    node = nir.LI(tau=ones, r=ones, v_leak=0 * ones)
    shape = [2]
    if defect == "same padding":
        node = nir.Conv2d(
            input_shape=(4, 4),
            weight=np.ones((1, 1, 3, 3)),
            stride=2,
            padding="same",
            dilation=1,
            groups=1,
            bias=np.zeros(1),
        )
        shape = [1, 4, 4]
    if defect == "tau":
        node = nir.LI(tau=0 * ones, r=ones, v_leak=0 * ones)
    if defect == "shapes":
        shape = [3]
    nodes = {
        "input": nir.Input(input_type=np.array(shape)),
        "n": node,
        "output": nir.Output(output_type=np.array(node.output_type["output"])),
    }
    edges = [("input", "n"), ("n", "output")] + ([("n", "input")] * (defect == "input edge"))
    return load(nir.NIRGraph(nodes, edges, type_check=False), dt=1.0)


def _nir_model():
    nir = pytest.importorskip("nir")
    from dualstep.nir import load

    return load(nir.NIRGraph.from_list(nir.Linear(weight=np.eye(2))), dt=1.0)


def _linear():
    return pytest.importorskip("torch").nn.Linear(2, 2)


@dataclasses.dataclass
class _Plain:
    v: object


def _seq(b, shape=(3, 2)):
    return b.asarray(np.ones(shape))


LIF = lif_step()


def _zeros(b, shape=(2,)):
    return b.asarray(np.zeros(shape))


def _lengths(b, defect):
    """`lengths` of another kind of array, or of a float dtype."""
    if defect == "other":
        return _other_kind(b.name, np.array([1, 2]))
    return b.asarray(np.array([1.0, 2.0]))


def _pooled(x, s):
    """A step whose state has no batch axis (a sum over the batch)."""
    return x, s + x.sum()


BAD_CALLS = {
    1: lambda b: ds.multi_step_forward((_seq(b), _seq(b)), _ident),
    2: lambda b: ds.seq_to_ann_forward(_seq(b, (3,)), _ident),
    3: lambda b: ds.t_last_multi_step_forward(_seq(b, (2, 0)), _ident),
    4: lambda b: ds.seq_to_ann_forward((), _ident),
    5: lambda b: ds.seq_to_ann_forward((_seq(b), _other_kind(b.name, np.ones((3, 2)))), _ident),
    6: lambda b: ds.seq_to_ann_forward((_seq(b, (3, 2, 4)), _seq(b, (3, 1, 4))), _ident),
    7: lambda b: ds.multi_step_forward(_seq(b), 3),
    8: lambda b: ds.multi_step_forward(_seq(b), [_ident, 3]),
    9: lambda b: ds.chunk_multi_step_forward(2.0, _seq(b), _ident),
    10: lambda b: ds.chunk_multi_step_forward(0, _seq(b), _ident),
    11: lambda b: ds.multi_step_forward(_seq(b), [_ident, LIF], state=b.asarray(np.zeros(2))),
    12: lambda b: ds.multi_step_forward(_seq(b), [_ident, LIF], state=(None,)),
    13: lambda b: ds.multi_step_forward(_seq(b), lambda x, s: x, state=b.asarray(np.zeros(2))),
    14: lambda b: ds.chunk_multi_step_forward(2, _seq(b), _ident, checkpoint=1),
    15: _spikingjelly_memory_module,
    16: _wrong_step_mode,
    17: lambda b: ds.multi_step_forward(_seq(b), LIF, state=_other_kind(b.name, np.zeros(2))),
    18: lambda b: ds.multi_step_forward(_seq(b), lambda x, s: (x, s[:1]), state=_seq(b, (2,))),
    19: lambda b: ds.multi_step_forward(_seq(b), _ident, fused="always"),
    20: lambda b: ds.t_last_multi_step_forward(_seq(b), _ident, fused=1),
    21: lambda b: ds.multi_step_forward(_seq(b), _ident, unroll=2.0),
    22: lambda b: ds.t_last_multi_step_forward(_seq(b), _ident, unroll=0),
    23: lambda b: ds.multi_step_forward(_seq(b), lambda x: x.sum(-1), fused=True),
    24: lambda b: ds.multi_step_forward(_seq(b), _ident, fused=True),
    25: _fused_memory_module,
    26: lambda b: ds.chunk_multi_step_forward(2, _seq(b), _ident, compile=1),
    27: lambda b: ds.chunk_multi_step_forward(2, _seq(b), _ident, checkpoint=True, compile=True),
    28: lambda b: assert_backends_close(_ident, _seq(b), backends=[b.name], rtol=float("nan")),
    29: lambda b: ds.multi_step_forward(_seq(b), lambda x, s: (x, s), state=_Plain(_seq(b, (2,)))),
    30: lambda b: _nir_graph("input edge"),
    31: lambda b: _nir_graph("same padding"),
    32: lambda b: _nir_graph("tau"),
    33: lambda b: pytest.importorskip("dualstep.interop").module_from_jax(_linear(), None),
    34: lambda b: _nir_model().initial_state(b.asarray(np.ones((3, 2, 2), np.int32))),
    35: lambda b: _nir_graph("shapes"),
    36: lambda b: ds.multi_step_forward(_seq(b), LIF, lengths=[1, 2]),
    37: lambda b: ds.multi_step_forward(
        _seq(b), LIF, state=_zeros(b), lengths=_lengths(b, "other")
    ),
    38: lambda b: ds.t_last_multi_step_forward(
        _seq(b), LIF, state=_zeros(b, 3), lengths=[1, 2.0, 3]
    ),
    39: lambda b: ds.multi_step_forward(
        _seq(b), LIF, state=_zeros(b), lengths=_lengths(b, "float")
    ),
    40: lambda b: ds.multi_step_forward(_seq(b), LIF, state=_zeros(b), lengths=[1, 2, 3]),
    41: lambda b: ds.multi_step_forward(_seq(b, (4,)), LIF, state=_zeros(b, ()), lengths=[1]),
    42: lambda b: ds.multi_step_forward(_seq(b), LIF, state=_zeros(b), lengths=[5, 0]),
    43: lambda b: ds.multi_step_forward(_seq(b), _pooled, state=_zeros(b, ()), lengths=[1, 2]),
    44: lambda b: ds.multi_step_forward(_seq(b), LIF, state=_zeros(b), lengths=[1, 2], fill="0"),
}
EXCEPTIONS = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "NotFusable": ds.NotFusable,
    "UnsupportedNode": UnsupportedNode,
}
ONLY = {
    15: {"torch"},
    16: {"torch"},
    23: {"torch", "jax"},
    24: {"numpy"},
    25: {"torch"},
    29: {"jax"},
    30: {"numpy"},
    31: {"numpy"},
    32: {"numpy"},
    33: {"torch"},
    35: {"numpy"},
}
CASES = [(n, b) for n in sorted(ERROR_ROWS) for b in BACKENDS if b in ONLY.get(n, BACKENDS)]


def test_every_row_has_a_bad_call_and_every_bad_call_a_row():
    assert len(ERROR_ROWS) >= 15
    assert sorted(ERROR_ROWS) == sorted(BAD_CALLS)


@pytest.mark.parametrize(("row", "backend_name"), CASES)
def test_row(row, backend_name, request):
    backend = MAKERS[backend_name]()
    if backend_name == "jax":
        request.getfixturevalue("jax_x64")
    kind, message = ERROR_ROWS[row]
    with pytest.raises(EXCEPTIONS[kind]) as info:
        BAD_CALLS[row](backend)
    assert type(info.value) is EXCEPTIONS[kind]
    assert re.fullmatch(error_pattern(message), str(info.value), re.S), str(info.value)
