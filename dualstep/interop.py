"""Move arrays between torch, JAX and NumPy through DLPack, without copying where possible.

`to_torch`, `to_jax` and `to_numpy` convert an array, or any nesting of tuples (named tuples
included), lists and dicts of arrays; ``None`` and Python scalars pass through unchanged, as in
a `state=` tuple, and NumPy scalars convert as the 0-d arrays they are. The dtype is kept
(float16, bfloat16, float32, float64, the integer types, bool, complex) and so is the device
where both sides have it.

Memory is shared where the frameworks allow it: torch <-> JAX through DLPack (a CPU tensor sent
to JAX and back is the original memory), torch -> NumPy through ``Tensor.numpy()`` and JAX ->
NumPy as a read-only view. A shared buffer changes on both sides: JAX assumes its arrays never
change, so do not modify a tensor in place while a JAX array made from it is in use.
Copies are made where sharing is impossible: from NumPy to JAX (XLA wants its own alignment), a
read-only NumPy array to torch (torch tensors are always writable), a NumPy array with negative
strides or another byte order to torch, a CUDA tensor to NumPy, a tensor JAX cannot alias (a
broadcast or strided view, an offset it cannot take, a conjugate or negative view).

`module_to_jax` and `module_from_jax` port a torch ``nn.Module``'s parameters and buffers to a
dict of JAX arrays keyed by their names, and back; both copy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ._dispatch import SUPPORTED, dtype_name, kind_of
from ._tree import map_with_path

__all__ = ["module_from_jax", "module_to_jax", "to_jax", "to_numpy", "to_torch"]

_PASS_THROUGH = (type(None), bool, int, float, complex)


def _map(tree: Any, convert: Callable[[Any, str, str], Any], path: str) -> Any:
    """`convert(leaf, kind, path)` on every array of `tree`; None and Python scalars pass."""

    def leaf(x: Any, where: str) -> Any:
        if isinstance(x, _PASS_THROUGH):
            return x
        if isinstance(x, np.generic):
            x = np.asarray(x)  # NumPy's scalars are its 0-d arrays
        kind = kind_of(x)
        if kind is None:
            raise TypeError(
                f"`{where}` must be a {SUPPORTED}, or a tuple/list/dict of them; "
                f"got {type(x).__module__}.{type(x).__qualname__}"
            )
        if kind == "jax" and getattr(x, "is_deleted", lambda: False)():
            raise ValueError(f"`{where}` is a JAX array that has been deleted")
        return convert(x, kind, where)

    return map_with_path(leaf, tree, path)


def _framework(name: str) -> ModuleType:
    """``import torch`` or ``import jax``, or an ImportError naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"converting to or from {name} needs {name}: pip install 'dualstep[{name}]'",
            name=name,
        ) from error


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError as e:  # installed with JAX
        raise TypeError(
            "NumPy needs ml_dtypes for bfloat16 (installed with JAX): pip install ml_dtypes"
        ) from e
    return ml_dtypes.bfloat16


def _is_bfloat16(a: np.ndarray) -> bool:
    return a.dtype.name == "bfloat16"


def _numpy_to_torch(a: np.ndarray) -> Any:
    torch = _framework("torch")

    if _is_bfloat16(a):  # DLPack from NumPy has no bfloat16: reinterpret the same bits
        return _numpy_to_torch(a.view(np.int16)).view(torch.bfloat16)
    if not a.flags.writeable or any(s < 0 for s in a.strides) or not a.dtype.isnative:
        # torch has no read-only tensors, no negative strides and only native byte order
        return torch.from_numpy(np.array(a, dtype=a.dtype.newbyteorder("="), order="C"))
    return torch.from_numpy(a)


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


_NEEDS_X64 = {"float64", "int64", "uint64", "complex128"}


def needs_x64(a: Any) -> bool:
    """Whether JAX needs ``jax_enable_x64`` to hold an array of `a`'s dtype unchanged."""
    return dtype_name(a) in _NEEDS_X64


def _check_jax_dtype(name: str, path: str) -> None:
    jax = _framework("jax")

    if name in _NEEDS_X64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"`{path}` is {name}, which JAX would silently turn into a 32-bit type; "
            "enable 64-bit JAX first: jax.config.update('jax_enable_x64', True)"
        )


def to_torch(tree: Any) -> Any:
    """Convert arrays (or a nesting of tuples, lists and dicts of them) to torch tensors.

    JAX arrays come through DLPack, sharing memory and device; NumPy arrays through
    ``torch.from_numpy`` (shared; read-only arrays are copied). Tensors are returned as is.

    Raises
    ------
    TypeError
        A leaf that is not a torch, JAX or NumPy array, ``None`` or a Python scalar.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(3.0)
    >>> t = to_torch({"w": a, "b": None})["w"]
    >>> t.data_ptr() == a.ctypes.data
    True
    """
    return _map(tree, _to_torch_leaf, "tree")


def _to_torch_leaf(x: Any, kind: str, path: str) -> Any:
    if kind == "torch":
        return x
    if kind == "numpy":
        return _numpy_to_torch(x)
    return _framework("torch").from_dlpack(x)


def _to_numpy_leaf(x: Any, kind: str, path: str) -> Any:
    if kind == "numpy":
        return x
    if kind == "torch":
        return _torch_to_numpy(x)
    return np.asarray(x)


def _to_jax_leaf(x: Any, kind: str, path: str) -> Any:
    if kind == "jax":
        return x
    _check_jax_dtype(dtype_name(x), path)
    import jax
    import jax.dlpack

    if kind == "numpy":
        if not x.dtype.isnative:  # JAX takes native byte order only: convert, as to_torch does
            x = x.astype(x.dtype.newbyteorder("="))
        return jax.numpy.asarray(x)
    t = x.detach().resolve_conj().resolve_neg()  # DLPack has no conjugate or negative bit
    try:
        return jax.dlpack.from_dlpack(t)
    except (RuntimeError, ValueError, BufferError):
        pass  # a layout JAX cannot alias (broadcast, strided `.real`, ...): copy, compact
    try:
        return jax.dlpack.from_dlpack(t.contiguous().clone())
    except (RuntimeError, ValueError, BufferError) as e:
        raise ValueError(
            f"`{path}` (a torch tensor on {x.device}) cannot be moved to JAX, whose "
            f"devices are {jax.devices()}: {e}"
        ) from e


def to_jax(tree: Any) -> Any:
    """Convert arrays (or a nesting of tuples, lists and dicts of them) to JAX arrays.

    torch tensors come through DLPack, sharing memory and device (a tensor that requires grad
    is detached first); NumPy arrays are copied (``jax.numpy.asarray``). JAX arrays are
    returned as is.

    Raises
    ------
    TypeError
        A leaf that is not a torch, JAX or NumPy array, ``None`` or a Python scalar.
    ValueError
        A 64-bit array while ``jax_enable_x64`` is off (JAX would change its dtype), or a tensor
        on a device JAX does not have.

    Examples
    --------
    >>> import numpy as np
    >>> to_jax((np.ones(2, np.float32), 3))[0].dtype
    dtype('float32')
    """
    return _map(tree, _to_jax_leaf, "tree")


def to_numpy(tree: Any) -> Any:
    """Convert arrays (or a nesting of tuples, lists and dicts of them) to NumPy arrays.

    CPU tensors share memory (``Tensor.numpy()``, after ``detach``); CUDA tensors are copied to
    the host. JAX arrays on the CPU become read-only views. bfloat16 maps to
    ``ml_dtypes.bfloat16``, the type JAX uses.

    Raises
    ------
    TypeError
        A leaf that is not a torch, JAX or NumPy array, ``None`` or a Python scalar.

    Examples
    --------
    >>> to_numpy([np.zeros(2), None])
    [array([0., 0.]), None]
    """
    return _map(tree, _to_numpy_leaf, "tree")


_NARROW = {"torch.int64": "int32", "torch.uint64": "uint32"}


def _narrowed(t: Any, name: str) -> Any:
    """A 64-bit integer tensor as 32 bits when JAX has no 64-bit types and its values fit."""
    jax = _framework("jax")
    import torch

    narrow = _NARROW.get(str(t.dtype))
    if narrow is None or jax.config.read("jax_enable_x64"):
        return t
    info = np.iinfo(narrow)
    if t.numel() and (int(t.min()) < info.min or int(t.max()) > info.max):
        raise ValueError(
            f"`{name}` is {dtype_name(t)} with values outside {narrow}, which JAX without "
            "64-bit types cannot hold; enable them first: "
            "jax.config.update('jax_enable_x64', True)"
        )
    return t.to(getattr(torch, narrow))


_WHICH = ("all", "parameters", "buffers")


def module_to_jax(module: Any, *, which: str = "all") -> dict[str, Any]:
    """A copy of a torch module's parameters and buffers as JAX arrays, keyed by their names.

    The names are those of ``named_parameters()`` then ``named_buffers()``
    (``"0.weight"``, ``"bn.running_mean"``); dtypes and devices are kept. The arrays are
    copies, so later training of the module does not change them.

    ``which="parameters"`` gives the parameters alone (what ``jax.grad`` trains; frozen ones
    included), ``which="buffers"`` the buffers alone (batch norm's running statistics and its
    integer ``num_batches_tracked``, which ``jax.grad`` refuses); `module_from_jax` takes the
    two merged, ``{**params, **buffers}``.

    64-bit integer buffers (batch norm's ``num_batches_tracked``) become 32-bit when
    ``jax_enable_x64`` is off and their values fit (`module_from_jax` widens them back), so a
    model with batch norm ports with JAX's default settings; float64 still needs x64.

    Raises
    ------
    ValueError
        A float64 (or complex128) tensor, or a 64-bit integer whose values do not fit in 32
        bits, while ``jax_enable_x64`` is off; `which` is not one of its three values.
    ImportError
        JAX is not installed.

    Examples
    --------
    >>> import torch
    >>> params = module_to_jax(torch.nn.BatchNorm1d(3))
    >>> sorted(params), params["num_batches_tracked"].dtype
    (['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight'], dtype('int32'))
    >>> sorted(module_to_jax(torch.nn.BatchNorm1d(3), which="parameters"))
    ['bias', 'weight']
    """
    if which not in _WHICH:
        raise ValueError(f"`which` must be one of {_WHICH}; got {which!r}")
    tensors = {
        **(dict(module.named_parameters()) if which != "buffers" else {}),
        **(dict(module.named_buffers()) if which != "parameters" else {}),
    }
    return {
        name: _map(_narrowed(t.detach(), name).clone(), _to_jax_leaf, name)
        for name, t in tensors.items()
    }


def module_from_jax(module: Any, params: dict[str, Any]) -> Any:
    """Copy arrays keyed by name (as `module_to_jax` returns them) into a torch module.

    Every parameter and buffer of `module` must be given (merge the two dicts of
    ``module_to_jax(which=...)``), and nothing else; each array must
    have its tensor's shape and dtype (a 32-bit integer array is accepted for a 64-bit integer
    tensor, as `module_to_jax` narrows those without x64). Values are copied in place, so
    optimisers holding the parameters keep working. Returns `module`.

    Raises
    ------
    TypeError
        `params` is not a dict, or a value that is not a torch, JAX or NumPy array.
    ValueError
        Missing or unexpected names, a shape or dtype that differs from the module's, or a
        tensor of the module that cannot be written in place (an inference tensor, an
        expanded buffer whose elements share memory). Every check runs before anything is
        written, so the module is changed entirely or not at all.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> torch.equal(module_from_jax(b, module_to_jax(a)).weight, a.weight)
    True
    """
    import torch

    if not isinstance(params, dict):
        raise TypeError(
            "`params` must be a dict of arrays by name (as module_to_jax returns); "
            f"got {type(params).__qualname__}"
        )
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    missing, unexpected = tensors.keys() - params.keys(), params.keys() - tensors.keys()
    if missing or unexpected:
        raise ValueError(
            f"`params` must have exactly the module's parameter and buffer names; "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    converted = {name: _map(params[name], _to_torch_leaf, f"params[{name!r}]") for name in tensors}
    for name, t in tensors.items():
        src = converted[name]
        if not isinstance(src, torch.Tensor):
            raise TypeError(
                f"`params[{name!r}]` must be a {SUPPORTED}; "
                f"got {type(src).__module__}.{type(src).__qualname__}"
            )
        widened = _NARROW.get(str(t.dtype)) == dtype_name(src)
        if src.shape != t.shape or (src.dtype != t.dtype and not widened):
            raise ValueError(
                f"`params[{name!r}]` must have shape {tuple(t.shape)} and dtype {t.dtype}; "
                f"got shape {tuple(src.shape)} and dtype {src.dtype}"
            )
        # What `copy_` would refuse half-way through, checked before anything is written.
        if t.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                f"the module's {name!r} is an inference tensor (made under "
                "torch.inference_mode()), which cannot be written outside it"
            )
        if torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(
                f"the module's {name!r} has elements that share memory (an expanded tensor), "
                "so it cannot be written element by element"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(converted[name])
    return module
