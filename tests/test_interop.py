"""dualstep.interop: DLPack conversions keep values, dtypes, nesting and (where allowed) memory."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
ml_dtypes = pytest.importorskip("ml_dtypes")

from dualstep.interop import module_from_jax, module_to_jax, to_jax, to_numpy, to_torch  # noqa: E402

DTYPES_32 = ["float16", "bfloat16", "float32", "int8", "int16", "int32", "uint8", "bool"]
DTYPES_64 = ["float64", "int64", "complex128"]


def _np_dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _sample(name, shape=(3, 4)):
    values = np.arange(np.prod(shape)).reshape(shape) % 5 - 2
    return (values > 0 if name == "bool" else values).astype(_np_dtype(name))


def _make(kind, a):
    """`a` (NumPy) as a fresh array of `kind`."""
    if kind == "numpy":
        return a.copy()
    if kind == "torch":  # cloned: torch's allocator aligns memory as XLA needs to alias it
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).clone().view(torch.bfloat16)
        return torch.from_numpy(a).clone()
    return jnp.asarray(a)


def _dtype_name(x):
    return str(x.dtype).removeprefix("torch.")


def _ptr(x):
    if isinstance(x, torch.Tensor):
        return x.data_ptr()
    if isinstance(x, np.ndarray):
        return x.ctypes.data
    return x.unsafe_buffer_pointer()


CONVERT = {"numpy": to_numpy, "torch": to_torch, "jax": to_jax}
TYPES = {"numpy": np.ndarray, "torch": torch.Tensor, "jax": jax.Array}
KINDS = list(CONVERT)


@pytest.mark.parametrize("source", KINDS)
@pytest.mark.parametrize("target", KINDS)
@pytest.mark.parametrize("dtype", DTYPES_32)
def test_values_and_dtype_kept_in_every_direction(source, target, dtype):
    a = _sample(dtype)
    got = CONVERT[target](_make(source, a))
    assert isinstance(got, TYPES[target])
    assert _dtype_name(got) == dtype and tuple(got.shape) == a.shape
    np.testing.assert_array_equal(to_numpy(got).astype(np.float64), a.astype(np.float64))


@pytest.mark.parametrize("source", KINDS)
@pytest.mark.parametrize("target", KINDS)
@pytest.mark.parametrize("dtype", DTYPES_64)
def test_64_bit_dtypes_kept_with_x64(jax_x64, source, target, dtype):
    a = _sample(dtype)
    got = CONVERT[target](_make(source, a))
    assert _dtype_name(got) == dtype
    np.testing.assert_array_equal(to_numpy(got), a)


@pytest.mark.parametrize("dtype", ["float64", "int64"])
@pytest.mark.parametrize("source", ["numpy", "torch"])
def test_64_bit_to_jax_without_x64_raises_instead_of_narrowing(source, dtype):
    if jax.config.read("jax_enable_x64"):
        pytest.skip("x64 is on")
    with pytest.raises(ValueError, match=rf"`tree\[1\]` is {dtype}, .*jax_enable_x64"):
        to_jax((None, _make(source, _sample(dtype))))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int32", "uint8", "bool"])
def test_torch_jax_torch_round_trip_shares_the_original_memory(dtype):
    t = _make("torch", _sample(dtype, (64, 8)))
    j = to_jax(t)
    back = to_torch(j)
    assert _ptr(j) == _ptr(t) and _ptr(back) == _ptr(t)
    assert back.dtype == t.dtype and torch.equal(back, t)


def test_sharing_where_the_frameworks_allow_it():
    t = torch.randn(16, 4)
    assert _ptr(to_numpy(t)) == _ptr(t)  # Tensor.numpy()
    a = np.ones((16, 4), np.float32)
    assert _ptr(to_torch(a)) == _ptr(a)  # torch.from_numpy
    j = jnp.arange(16.0, device=jax.devices("cpu")[0])  # NumPy can share host memory only
    view = to_numpy(j)
    assert _ptr(view) == _ptr(j) and not view.flags.writeable


def test_read_only_numpy_is_copied_to_torch_without_a_warning():
    a = np.arange(4.0)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = to_torch(a)
    assert _ptr(t) != _ptr(a) and torch.equal(t, torch.arange(4.0, dtype=torch.float64))
    t += 1  # writable, and the read-only original is untouched
    assert a[0] == 0


def test_tensor_requiring_grad_is_detached():
    t = torch.ones(3, requires_grad=True)
    assert to_jax(t).tolist() == [1.0, 1.0, 1.0]
    n = to_numpy(t * 2)
    assert isinstance(n, np.ndarray) and n.tolist() == [2.0, 2.0, 2.0]


def test_zero_sized_and_zero_dimensional_arrays():
    for x in (torch.ones(0, 3), torch.tensor(2.5)):
        for convert in CONVERT.values():
            got = convert(x)
            assert tuple(got.shape) == tuple(x.shape)
            np.testing.assert_array_equal(to_numpy(got), x.numpy())


def test_nesting_is_kept():
    Pair = collections.namedtuple("Pair", "v i")
    ones = np.ones(2, np.float32)
    tree = {"state": (ones, None), "pair": Pair(ones[:1], 3), "list": [ones, 1.5]}
    got = to_torch(tree)
    assert list(got) == ["state", "pair", "list"]
    assert isinstance(got["state"], tuple) and got["state"][1] is None
    assert isinstance(got["pair"], Pair) and got["pair"].i == 3
    assert isinstance(got["list"], list) and got["list"][1] == 1.5
    assert all(isinstance(a, torch.Tensor) for a in (got["state"][0], got["pair"].v))
    back = to_numpy(to_jax(got))
    np.testing.assert_array_equal(back["list"][0], tree["list"][0])


@pytest.mark.parametrize("convert", CONVERT.values(), ids=KINDS)
def test_what_cannot_be_converted_raises_type_error_naming_it(convert):
    want = r"`tree\['a'\]\[1\]` must be a torch.Tensor, .*; got builtins.str"
    with pytest.raises(TypeError, match=want):
        convert({"a": [np.ones(1, np.float32), "spikes"]})
    with pytest.raises(TypeError, match=r"`tree` must be .*; got builtins.object"):
        convert(object())


# --- porting weights ------------------------------------------------------------------------


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_module_to_jax_names_dtypes_and_copies(jax_x64):
    torch.manual_seed(0)
    net = _net()
    params = module_to_jax(net)
    assert list(params) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert all(isinstance(a, jax.Array) for a in params.values())
    assert params["1.num_batches_tracked"].dtype == jnp.int64
    np.testing.assert_array_equal(np.asarray(params["0.weight"]), net[0].weight.detach().numpy())
    before = np.asarray(params["0.weight"]).copy()
    with torch.no_grad():
        net[0].weight.add_(1.0)  # training the module later must not change the snapshot
    np.testing.assert_array_equal(np.asarray(params["0.weight"]), before)


def test_module_round_trip_through_jax(jax_x64):
    torch.manual_seed(0)
    source, target = _net(), _net()
    source(torch.randn(5, 4))  # move the BatchNorm running statistics
    weight = target[0].weight
    assert module_from_jax(target, module_to_jax(source)) is target
    assert target[0].weight is weight  # copied in place: optimisers keep their parameters
    want, got = source.state_dict(), target.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_module_with_batchnorm_ports_without_x64():
    """Issue: the docstring's own BatchNorm example needed global x64 (int64 counters)."""
    if jax.config.read("jax_enable_x64"):
        pytest.skip("x64 is on")
    net = _net()
    net(torch.randn(4, 4))  # one training step: running statistics and a counter of 1
    params = module_to_jax(net)
    assert params["1.num_batches_tracked"].dtype == jnp.int32
    assert int(params["1.num_batches_tracked"]) == 1
    fresh = _net()
    module_from_jax(fresh, params)  # int32 widened back into the int64 buffer
    assert fresh[1].num_batches_tracked.dtype == torch.int64
    for (name, a), b in zip(net.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    net[1].num_batches_tracked.fill_(2**40)
    with pytest.raises(ValueError, match=r"`1.num_batches_tracked` is int64 with values outside"):
        module_to_jax(net)
    with pytest.raises(ValueError, match=r"`weight` is float64"):
        module_to_jax(torch.nn.Linear(2, 2).double())


def test_parameters_and_buffers_apart_for_jax_grad():
    """`jax.grad` refuses the integer `num_batches_tracked`: the parameters alone train, the
    buffers stay apart, and both merged go back into the module."""
    net = _net()
    net(torch.randn(4, 4))
    params = module_to_jax(net, which="parameters")
    buffers = module_to_jax(net, which="buffers")
    assert list(params) == [n for n, _ in net.named_parameters()]
    assert list(buffers) == [n for n, _ in net.named_buffers()]
    assert {**params, **buffers}.keys() == module_to_jax(net).keys()

    def loss(p, x):
        y = x @ p["0.weight"].T + p["0.bias"]
        return ((y - buffers["1.running_mean"]) ** 2).sum()

    grads = jax.grad(loss)(params, jnp.ones((2, 4)))
    assert grads.keys() == params.keys() and grads["0.weight"].shape == (3, 4)
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
        jax.grad(lambda p: p["0.weight"].sum())(module_to_jax(net))
    fresh = _net()
    module_from_jax(fresh, {**params, **buffers})
    for (name, a), b in zip(net.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"`which` must be one of \('all', 'parameters', "):
        module_to_jax(net, which="weights")


def test_module_from_jax_rejects_a_value_that_is_not_an_array():
    net = torch.nn.Linear(2, 2)
    params = module_to_jax(net)
    with pytest.raises(
        TypeError,
        match=r"`params\['bias'\]` must be a torch.Tensor, .* got "
        r"builtins.float",
    ):
        module_from_jax(net, {**params, "bias": 0.25})


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(12.0).reshape(3, 4)[:, 1:],  # an offset JAX cannot alias
        lambda: torch.ones(3).expand(4, 3),  # stride 0
        lambda: torch.randn(3, dtype=torch.complex64).real,  # stride 2
        lambda: torch.randn(3, dtype=torch.complex64).conj(),  # the conjugate bit
        lambda: torch.randn(3, dtype=torch.complex64).conj().imag,  # the negative bit
    ],
    ids=["offset", "expand", "real", "conj", "neg"],
)
def test_to_jax_copies_tensors_jax_cannot_alias(make):
    t = make()
    got = to_jax(t)
    want = t.resolve_conj().resolve_neg().numpy()
    np.testing.assert_array_equal(np.asarray(got), want)
    assert got.dtype == want.dtype


def test_numpy_negative_strides_and_byte_order_are_copied_to_torch():
    a = np.arange(6.0)[::-2]
    t = to_torch(a)
    np.testing.assert_array_equal(t.numpy(), a)
    big = np.arange(3, dtype=">i4")
    assert to_torch(big).tolist() == [0, 1, 2] and to_torch(big).dtype == torch.int32


@pytest.mark.parametrize("convert", CONVERT.values(), ids=KINDS)
def test_numpy_scalars_pass_as_zero_dimensional_arrays(convert):
    got = convert({"v": np.float32(1.5), "n": np.int32(2)})
    assert got["v"].shape == () and got["n"].shape == ()
    assert _dtype_name(got["v"]) == "float32" and _dtype_name(got["n"]) == "int32"
    assert float(got["v"]) == 1.5


def test_module_from_jax_rejects_wrong_names_shapes_and_dtypes():
    net = torch.nn.Linear(2, 2)
    params = module_to_jax(net)
    with pytest.raises(ValueError, match=r"missing \['bias'\], unexpected \['b'\]"):
        module_from_jax(net, {"weight": params["weight"], "b": params["bias"]})
    with pytest.raises(ValueError, match=r"`params\['bias'\]` must have shape \(2,\) and dtype"):
        module_from_jax(net, {**params, "bias": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"dtype torch.float32; got shape \(2,\) and dtype "):
        module_from_jax(net, {**params, "bias": jnp.zeros(2, jnp.float16)})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_keep_their_device():
    t = torch.arange(6.0, device="cuda").reshape(2, 3)
    host = to_numpy(t)  # NumPy lives on the host: a copy
    assert isinstance(host, np.ndarray) and host.tolist() == t.cpu().tolist()
    if any(d.platform == "gpu" for d in jax.devices()):
        j = to_jax(t)
        assert j.devices().pop().platform == "gpu"
        back = to_torch(j)
        assert back.device == t.device and back.data_ptr() == t.data_ptr()
    else:
        with pytest.raises(ValueError, match="cannot be moved to JAX"):
            to_jax(t)


@pytest.mark.parametrize("kind", KINDS)
def test_needs_x64_is_the_one_rule_for_64_bit_dtypes(kind, jax_x64):
    """One rule, used by `to_jax` and by `assert_backends_close` (which used to read
    ``itemsize == 8`` and so also switched JAX to x64 for complex64)."""
    from dualstep.interop import needs_x64

    wide = {"float64", "int64", "uint64", "complex128"}
    for name in ["float32", "int32", "complex64", "float16", "bool", *sorted(wide)]:
        a = _make(kind, np.zeros(2, dtype=name))
        assert needs_x64(a) == (name in wide), (kind, name)


# --- issue 24: interop edge cases ------------------------------------------------------------


def test_big_endian_numpy_goes_to_jax_as_to_torch():
    """A JAX-internal TypeError without the leaf path before; now converted, as to_torch does."""
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    j = to_jax({"w": a})["w"]
    assert j.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(j), a)
    np.testing.assert_array_equal(to_torch(a).numpy(), a)


def test_a_deleted_jax_array_is_named():
    j = jnp.ones(3)
    j.delete()
    for convert in (to_torch, to_numpy):
        with pytest.raises(ValueError, match=r"`tree\['v'\]` is a JAX array that has been deleted"):
            convert({"v": j})


def test_module_from_jax_writes_all_or_nothing_and_names_params():
    """A tensor that cannot be written in place (an expanded buffer, an inference tensor) is
    found before anything is written: the module is left as it was (it was half-written)."""
    lin = torch.nn.Linear(3, 2)
    lin.register_buffer("g", torch.zeros(1).expand(2))
    new = {k: np.asarray(v) + 5 for k, v in module_to_jax(lin).items()}
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(ValueError, match=r"the module's 'g' has elements that share memory"):
        module_from_jax(lin, new)
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    with torch.inference_mode():
        frozen = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"the module's 'weight' is an inference tensor"):
        module_from_jax(frozen, module_to_jax(torch.nn.Linear(3, 2)))
    for bad in (None, [1, 2]):
        with pytest.raises(TypeError, match=r"`params` must be a dict of arrays by name"):
            module_from_jax(lin, bad)
