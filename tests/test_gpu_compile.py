"""The fused kernels built for NVIDIA GPUs on this CPU machine, on every CI run.

The interpreters that run the fused tests here check far less than the GPU compilers (dtypes
of libdevice calls, primitives without a lowering rule). torch: every kernel a fused call makes,
with the launch a GPU would use, compiled ahead of time with ``triton.compile`` for sm_80 and
sm_90, down to a cubin (the triton wheel ships ptxas). JAX: the fused calls (forward and
gradient) lowered for CUDA, through Pallas' Triton lowering, which runs on CPU. A kernel that
would fail to build on a GPU fails here. Nothing runs on a GPU.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from support import every_neuron, surrogate_lifs  # noqa: E402

from dualstep.fused import triton as fused_triton  # noqa: E402
from dualstep.testing import surrogate_spike  # noqa: E402

TARGETS = (80, 90)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


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


def root(x, v):  # a square root, rounded to nearest in torch's CUDA kernels
    v = torch.sqrt(torch.abs(v + x)) * 0.5
    return v, v


STEPS = [lif, lif_tau3, transcendentals, dict_state]  # `root`: the rounding test below


def _kernels(step, dtype, grad):
    """The kernels a fused call of `step` builds (forward, and backward with `grad`), with a
    GPU's launch. Built, not run: the interpreter refuses bfloat16."""
    x = torch.rand(3, 8, dtype=dtype, requires_grad=grad)
    zero = torch.zeros(8, dtype=dtype)
    s0 = {"v": zero, "i": zero.clone()} if step is dict_state else zero
    with torch.set_grad_enabled(grad):
        kernels = fused_triton.gpu_kernels(x, step, s0)
    assert [k.fn.__name__ for k, _ in kernels] == (["fwd", "bwd"] if grad else ["fwd"])
    return kernels


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("step", STEPS, ids=lambda f: f.__name__)
def test_every_fused_kernel_compiles_to_a_cubin_for_sm80_and_sm90(step, dtype, grad):
    for kernel, launch in _kernels(step, dtype, grad):
        for cc in TARGETS:
            compiled = fused_triton.compile_ahead(kernel, launch, dtype, cc)
            assert "cubin" in compiled.asm, (kernel.fn.__name__, cc)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("step", [lif, lif_tau3, dict_state, root], ids=lambda f: f.__name__)
def test_the_compiled_arithmetic_rounds_as_the_loop_does(step, grad):
    """No fused multiply-add (the loop rounds each product and sum) and a division rounded to
    nearest (Triton's `/` is approximate in float32): for tau=3 either moves the voltage by an
    ulp, enough to flip a spike on the threshold. Transcendentals are libdevice's own code."""
    for kernel, launch in _kernels(step, torch.float32, grad):
        name = kernel.fn.__name__
        ptx = fused_triton.compile_ahead(kernel, launch, torch.float32, 90).asm["ptx"]
        assert "fma." not in ptx, name
        assert "div.approx" not in ptx and "div.full" not in ptx, name
        assert "sqrt.approx" not in ptx, name
        if step in (lif, lif_tau3) and name == "fwd":
            assert "div.rn.f32" in ptx
        if step is root and name == "fwd":
            assert "sqrt.rn.f32" in ptx


def _jax_steps():
    jnp = pytest.importorskip("jax.numpy")
    spike = surrogate_spike("jax")  # a jax.custom_vjp

    import jax

    @jax.custom_jvp
    def heaviside(h):
        return (h > 0).astype(h.dtype)

    heaviside.defjvp(lambda p, t: (heaviside(p[0]), t[0] / (1 + jnp.abs(4 * p[0])) ** 2))

    def surrogate(x, v):
        v = v + (x - v) / 2.0
        s = spike(v - 1.0)
        return s, v * (1 - s)

    def jvp_surrogate(x, v):
        v = v + (x - v) / 3.0
        s = heaviside(v - 1.0)
        return s, v * (1 - s)

    def lif(x, v):
        v = v + (x - v) / 2.0
        s = (v > 1.0).astype(x.dtype)
        return s, v * (1 - s)

    def transcendentals(x, v):
        v = jnp.tanh(v + x) * 0.5 + jax.nn.sigmoid(x) * jnp.exp(-v) / 3.0
        return v, v

    def dict_state(x, s):
        i = 0.8 * s["i"] + x
        v = 0.9 * s["v"] + i
        z = (v > 1.0).astype(x.dtype)
        return z, {"v": v - z, "i": i}

    return [lif, surrogate, jvp_surrogate, transcendentals, dict_state]


def _captured(c):
    """A step with a captured (traced) scalar, whose gradient the kernel sums per element."""

    def power(x, v):
        return abs(x) ** c + v, v * 0.5

    return power


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_fused_jax_call_lowers_for_cuda(dtype):
    """Forward and gradient of each step, custom_vjp and custom_jvp surrogates included (the
    gradient kernel differentiates the step through its own rules), in float32 and in half
    precision (computed in float32 inside, as XLA computes it)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    jnp = jax.numpy
    from dualstep.fused import pallas

    failures = []
    for step in _jax_steps():
        x = jnp.linspace(0.0, 2.0, 4 * 96, dtype=dtype).reshape(4, 96)
        zero = jnp.zeros(96, dtype)
        s0 = {"v": zero, "i": zero} if step.__name__ == "dict_state" else zero

        def forward(x, s0, step=step):
            return pallas.multi_step(x, step, s0, interpret=False)

        def gradient(x, s0, forward=forward):
            return jax.grad(lambda x: forward(x, s0)[0].astype(jnp.float32).sum())(x)

        for fn in (forward, gradient):
            try:
                jax.jit(fn).trace(x, s0).lower(lowering_platforms=("cuda",))
            except Exception as error:  # every failure is listed
                failures.append(f"{step.__name__} {fn.__name__}: {type(error).__name__}: {error}")
    x = jnp.linspace(0.0, 2.0, 4 * 96, dtype=dtype).reshape(4, 96)

    def captured(c, x):
        y, _ = pallas.multi_step(x, _captured(c), jnp.zeros(96, dtype), interpret=False)
        return y.astype(jnp.float32).sum()

    try:
        jax.jit(jax.grad(captured, (0, 1))).trace(jnp.asarray(2.0, dtype), x).lower(
            lowering_platforms=("cuda",)
        )
    except Exception as error:
        failures.append(f"captured-constant gradient: {type(error).__name__}: {error}")
    assert not failures, "\n".join(f[:300] for f in failures)


def test_a_jax_kernel_that_does_not_lower_is_not_fusable_and_auto_scans():
    """``round`` has no Pallas Triton lowering: the fused call is refused while it is traced
    (NotFusable, the lowering error chained), and fused='auto' on a GPU warns and runs the
    scan, instead of failing when the program compiles."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    jnp = jax.numpy
    import dualstep as ds
    from dualstep.backends import jax as jax_backend
    from dualstep.fused import pallas

    def rounded(x, v):
        return jnp.round(x + v), v

    x, v0 = jnp.ones((4, 96)), jnp.zeros(96)

    def lower(fn):
        return jax.jit(fn).trace(x, v0).lower(lowering_platforms=("cuda",))

    with pytest.raises(ds.NotFusable, match="could not be lowered") as caught:
        lower(lambda x, v: pallas.multi_step(x, rounded, v, interpret=False))
    assert caught.value.__cause__ is not None

    def auto(x, v):  # the backend's path for a call whose arrays are on a GPU
        return jax_backend._sequence(x, rounded, v, fused="auto", unroll=None, platform="cuda")

    with pytest.warns(RuntimeWarning, match="fused='auto' runs the scan: its kernel could not"):
        text = lower(auto).as_text()
    assert "triton" not in text.lower()


def test_the_launch_fills_the_card_and_holds_its_loads_in_registers():
    """`gpu_launch` over a range of problems: blocks and unrolls are powers of two; the
    block halves until there are two programs per SM (or one warp's lanes is reached); at
    least 8 steps' loads are in flight (fewer only for shorter sequences or longer steps);
    a thread holds at most 64 loaded values; the unroll stays within T."""
    from dualstep.fused import GPU, gpu_launch

    for n in (1, 40, 16384, 65536, 1 << 20, 1 << 24):
        for steps in (1, 5, 16, 1024):
            for itemsize, streams in ((4, 1), (2, 1), (4, 3), (8, 5)):
                launch = gpu_launch(n, steps, itemsize, streams, 300, 132)
                block, unroll, warps = launch["block"], launch["unroll"], launch["num_warps"]
                assert block & (block - 1) == 0 and unroll & (unroll - 1) == 0, launch
                assert GPU["min_block"] <= block <= GPU["max_block"] and 1 <= warps <= 8
                assert block == GPU["min_block"] or -(-n // block) >= 2 * 132, launch
                assert unroll <= steps and unroll >= min(8, 1 << (steps.bit_length() - 1))
                assert unroll * streams * (block // (32 * warps)) <= 64, launch
    # A long step unrolls less: its compile time grows faster than its code.
    assert gpu_launch(16384, 1024, 4, 1, 300, 132)["unroll"] == 32
    assert gpu_launch(16384, 1024, 4, 1, 1300, 132)["unroll"] == 8


def test_the_benchmark_launches_fill_the_card_without_spills():
    """The GPU benchmark's kernels at its sizes, with the launches chosen there, compiled for
    sm_90 (``python -m benchmarks.gpu_model``; on JAX the training workload, whose kernels
    are the largest): at least two programs per SM, no spills, at least 8 steps' loads in
    flight, and kernels that move the fewest bytes they can: training saves one array (the
    LIF's charged voltage, as SpikingJelly's kernel does), and the backward does not read
    x."""
    pytest.importorskip("jax.experimental.pallas.triton")
    from benchmarks import gpu_model

    rows = gpu_model.measure(jax_workloads=("LIF + surrogate",))
    assert [r["backend"] for r in rows] == ["torch"] * 8 + ["JAX"] * 4
    for r in rows:
        assert r["programs_per_sm"] >= 2, r
        assert r["spill_bytes"] == 0, r
        assert r["steps_in_flight"] >= 8, r
        assert r["bytes_per_step"] == r["minimum_bytes_per_step"], r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_kernels_compile_to_a_cubin_and_round_as_xla_does(tmp_path, dtype):
    """The Triton modules of fused JAX calls (forward and gradient of a custom_vjp LIF with
    tau=3 and a square root), compiled by the installed triton for sm_80 and sm_90 down to a
    cubin. Division, square root and sigmoid are rounded to nearest, as XLA computes them
    (Triton's own float32 lowering of these is ``div.approx``/``sqrt.approx``): no
    approximate instruction is left in the PTX. (XLA compiles these modules itself on a GPU,
    with its own fp-fusion setting; the fused-multiply-add check is torch's only.)"""
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    jnp = jax.numpy

    from dualstep.fused import pallas

    spike = surrogate_spike("jax")

    def step(x, v):
        h = v + (x - v) / 3.0
        s = spike(h - 1.0)
        return s, jnp.sqrt(jnp.abs(h)) * (1 - s)

    kernels = pallas.gpu_kernels(jnp.zeros((4, 96), dtype), step, jnp.zeros(96, dtype))
    assert [name for name, _, _ in kernels] == ["fwd", "bwd"]  # the forward saving the state
    for i, (_, module, _) in enumerate(kernels):
        for cc in TARGETS:
            compiled = _jax_cubin(tmp_path, i, module, cc)
            ptx = compiled.asm["ptx"]
            assert "cubin" in compiled.asm
            assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx, (i, cc)
            for approximate in ("div.approx", "div.full", "sqrt.approx", "rcp.approx"):
                assert approximate not in ptx, (i, cc, approximate)


def test_jax_gpu_launch_of_a_step_of_several_axes_counts_the_arrays_it_loads():
    """A GPU launch splits the step's gradient at the step's own shape, which its jaxpr holds
    (``ones_like`` of a [3, 32] step): the surrogate LIF's backward loads two arrays per
    step (the saved h and the spikes' cotangent), its forward writes two (spikes and h)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    jnp = jax.numpy
    from dualstep.fused import pallas

    spike = surrogate_spike("jax")

    def step(x, v):
        h = v + (x - v) / 2.0 + 0.0 * jnp.ones_like(x)
        s = spike(h - 1.0)
        return s, h * (1.0 - s)

    kernels = pallas.gpu_kernels(jnp.zeros((4, 3, 32)), step, jnp.zeros((3, 32)))
    assert [(name, launch["arrays"]) for name, _, launch in kernels] == [
        ("fwd", (1, 2)),
        ("bwd", (2, 1)),
    ]


def test_every_surrogate_trains_fused_on_a_gpu_build():
    """The torch kernels of a training call through every `dualstep.surrogate` compile to a
    cubin (float32 for sm_80, float16 for sm_90), and the JAX call's gradient lowers for
    CUDA: the gradients' `pow`, `abs`, `exp` and `where` have GPU lowerings on both."""
    from dualstep.surrogate import SURROGATES

    n = len(SURROGATES)
    step = surrogate_lifs([cls() for cls in SURROGATES])
    for dtype, cc in ((torch.float32, 80), (torch.float16, 90)):
        x = torch.rand(3, 8, dtype=dtype, requires_grad=True)
        states = tuple(torch.zeros(8, dtype=dtype) for _ in range(n))
        kernels = fused_triton.gpu_kernels(x, step, states)
        assert [k.fn.__name__ for k, _ in kernels] == ["fwd", "bwd"]
        for kernel, launch in kernels:
            assert "cubin" in fused_triton.compile_ahead(kernel, launch, dtype, cc).asm
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    jnp = jax.numpy
    from dualstep.fused import pallas

    x = jnp.linspace(0.0, 2.0, 4 * 96).reshape(4, 96)
    s0 = tuple(jnp.zeros(96) for _ in range(n))

    def gradient(x, s0):
        def loss(x):
            ys, _ = pallas.multi_step(x, step, s0, interpret=False)
            return sum(y.sum() for y in ys)

        return jax.grad(loss)(x)

    jax.jit(gradient).trace(x, s0).lower(lowering_platforms=("cuda",))


def test_every_neuron_trains_fused_on_a_gpu_build(tmp_path):
    """Every `dualstep.neurons` neuron in one training step: the torch kernels (float32 and
    float16) and the JAX modules (forward and gradient, float32) compile to a cubin for sm_90,
    the JAX ones with every division and sigmoid rounded to nearest (ParametricLIF's is of a
    0-d parameter)."""
    _, step, initial_state = every_neuron()
    for dtype in (torch.float32, torch.float16):
        x = torch.rand(3, 8, dtype=dtype, requires_grad=True)
        kernels = fused_triton.gpu_kernels(x, step, initial_state(x))
        assert [k.fn.__name__ for k, _ in kernels] == ["fwd", "bwd"]
        for kernel, launch in kernels:
            assert "cubin" in fused_triton.compile_ahead(kernel, launch, dtype, 90).asm
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")

    from dualstep.fused import pallas

    x = jax.numpy.zeros((4, 96))
    kernels = pallas.gpu_kernels(x, step, initial_state(x))
    assert [name for name, _, _ in kernels] == ["fwd", "bwd"]
    for i, (_, module, _) in enumerate(kernels):
        compiled = _jax_cubin(tmp_path, i, module, 90)
        assert "cubin" in compiled.asm and "div.rn.f32" in compiled.asm["ptx"]
        for approximate in ("div.approx", "div.full", "rcp.approx"):
            assert approximate not in compiled.asm["ptx"], (i, approximate)


def _jax_cubin(tmp_path, i, module, cc):
    """A Pallas kernel's Triton module (`pallas.gpu_kernels`) compiled for sm_`cc`."""
    from triton.backends.compiler import GPUTarget

    path = tmp_path / f"kernel{i}.ttir"
    path.write_text(module)
    try:
        options = {"enable_fp_fusion": False}  # stated: Triton 3.9 warns otherwise
        return triton.compile(str(path), target=GPUTarget("cuda", cc, 32), options=options)
    except Exception as error:
        if "parse" in str(error).lower():  # jaxlib's Triton dialect, not this triton's
            pytest.skip(f"the installed triton cannot read jaxlib's module: {error}")
        raise


def test_a_fused_call_with_lengths_compiles_for_a_gpu(tmp_path):
    """`lengths=` in a fused kernel (counts and lengths as two more state leaves, the
    backward starting each block at its longest length): the torch and JAX training kernels
    compile to a cubin for every target (sm_80, sm_90)."""
    from dualstep import _lengths, neurons

    step = _lengths.Elementwise(neurons.LIF(), -1.0)
    x = torch.rand(3, 4, 8, requires_grad=True)
    start = _lengths.elementwise_initial(x, torch.tensor([3, 0, 2, 1]), torch.zeros(4, 8), 0)
    kernels = fused_triton.gpu_kernels(x, step, start)
    assert [k.fn.__name__ for k, _ in kernels] == ["fwd", "bwd"]
    for kernel, launch in kernels:
        for cc in TARGETS:
            assert "cubin" in fused_triton.compile_ahead(kernel, launch, torch.float32, cc).asm
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas.triton")
    from dualstep.fused import pallas

    xj = jax.numpy.ones((4, 96))
    s0 = _lengths.elementwise_initial(xj, jax.numpy.asarray(3), jax.numpy.zeros(96), 0)
    modules = pallas.gpu_kernels(xj, step, s0)
    assert [name for name, _, _ in modules] == ["fwd", "bwd"]
    for i, (_, module, _) in enumerate(modules):
        for cc in TARGETS:
            assert "cubin" in _jax_cubin(tmp_path, i, module, cc).asm
