"""The fused Triton kernels compiled for NVIDIA GPUs (sm_80 and sm_90) on this CPU machine.

The interpreter that runs the fused tests here checks far less than the GPU compiler (dtypes
of libdevice calls, for one). This builds every kernel a fused call makes, with the launch a GPU
would use, and compiles it ahead of time with ``triton.compile`` for each target, down to a
cubin (the triton wheel ships ptxas): a kernel that would fail to build on a GPU fails here, on
every CI run. Nothing runs on a GPU.
"""

from __future__ import annotations

import itertools
import linecache

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from dualstep.fused import triton as fused_triton  # noqa: E402

TARGETS = (80, 90)
_count = itertools.count()
POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def lif(x, v):
    v = v + (x - v) / 2.0
    s = (v > 1.0).to(x.dtype)
    return s, v * (1 - s)


def lif_tau3(x, v):  # a division that is not exact in binary
    v = v + (x - v) / 3.0
    s = (v > 1.0).to(x.dtype)
    return s, v * (1 - s)


def transcendentals(x, v):
    v = torch.tanh(v + x) * 0.5 + torch.sigmoid(x) * torch.exp(-v)
    return v, v


def dict_state(x, s):
    i = 0.8 * s["i"] + x
    v = 0.9 * s["v"] + i
    z = (v > 1.0).to(x.dtype)
    return z, {"v": v - z, "i": i}


STEPS = [lif, lif_tau3, transcendentals, dict_state]


def _sources(step, dtype, grad, monkeypatch):
    """The Triton sources of the kernels a fused call of `step` builds (forward, and backward
    with `grad`), with a GPU's launch. Built, not run: the interpreter refuses bfloat16."""
    monkeypatch.setattr(fused_triton, "INTERPRET_LAUNCH", fused_triton.LAUNCH)
    monkeypatch.setattr(fused_triton, "_cache", type(fused_triton._cache)())
    built = []
    original = fused_triton._compile

    def capture(source, name, interpret, filenames):
        built.append((source, name))
        return original(source, name, interpret, filenames)

    monkeypatch.setattr(fused_triton, "_compile", capture)
    x = torch.rand(3, 8, dtype=dtype, requires_grad=grad)
    zero = torch.zeros(8, dtype=dtype)
    s0 = {"v": zero, "i": zero.clone()} if step is dict_state else zero
    with torch.set_grad_enabled(grad):
        fused_triton._kernels(x, step, s0, fused_triton.state_leaves(s0))
    assert [name for _, name in built] == (["fwd", "bwd"] if grad else ["fwd"])
    return built


def _compile(source, name, dtype, cc):
    filename = f"<gpu-compile-{next(_count)}>"  # Triton reads a kernel's source by linecache
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"triton": triton, "tl": triton.language}
    exec(compile(source, filename, "exec"), namespace)
    kernel = triton.jit(namespace[name])
    params = source.split("(", 1)[1].split(")", 1)[0].split(", ")
    signature, constexprs = {}, {}
    for param in (p.split(":")[0] for p in params):
        if param.endswith("_ptr"):
            signature[param] = POINTER[dtype]
        elif param in ("SAVE", "BLOCK"):
            signature[param] = "constexpr"
            constexprs[param] = True if param == "SAVE" else fused_triton.LAUNCH["block"]
        else:
            signature[param] = "i32"
    return triton.compile(
        triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
        target=triton.backends.compiler.GPUTarget("cuda", cc, 32),
        options=fused_triton._options(fused_triton.LAUNCH),
    )


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", list(POINTER), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("step", STEPS, ids=lambda f: f.__name__)
def test_every_fused_kernel_compiles_to_a_cubin_for_sm80_and_sm90(step, dtype, grad, monkeypatch):
    for source, name in _sources(step, dtype, grad, monkeypatch):
        for cc in TARGETS:
            compiled = _compile(source, name, dtype, cc)
            assert "cubin" in compiled.asm, (name, cc)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("step", [lif, lif_tau3, dict_state], ids=lambda f: f.__name__)
def test_the_compiled_arithmetic_rounds_as_the_loop_does(step, grad, monkeypatch):
    """No fused multiply-add (the loop rounds each product and sum) and a division rounded to
    nearest (Triton's `/` is approximate in float32): for tau=3 either moves the voltage by an
    ulp, enough to flip a spike on the threshold. Transcendentals are libdevice's own code."""
    for source, name in _sources(step, torch.float32, grad, monkeypatch):
        ptx = _compile(source, name, torch.float32, 90).asm["ptx"]
        assert "fma." not in ptx, name
        assert "div.approx" not in ptx and "div.full" not in ptx, name
        if step is not dict_state and name == "fwd":
            assert "div.rn.f32" in ptx
