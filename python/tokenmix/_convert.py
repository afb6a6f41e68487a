"""Array conversion between the caller's tensors (numpy arrays, CPU torch tensors) and the C++ core.

Inputs go to C++ without a copy when they are already what it reads: C-contiguous float32
(activations) and bool (masks). Anything else is a ValueError naming the function and argument,
except integer masks, which are read as ``!= 0`` (a small copy), as upstream reads them.
"""
from __future__ import annotations

import numpy as np


def is_torch(x) -> bool:
    """True when x is a torch.Tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def _describe(x) -> str:
    if is_torch(x):
        return f"torch.Tensor of dtype {x.dtype} on {x.device}"
    if isinstance(x, np.ndarray):
        return f"numpy array of dtype {x.dtype}"
    return type(x).__name__


def float_in(x, fn: str, arg: str) -> np.ndarray:
    """x as a C-contiguous float32 numpy array sharing its memory.

    Raises ValueError "<fn>: <arg>: ..." when x is not float32, not C-contiguous, or a torch tensor
    not on the CPU.
    """
    if is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{fn}: {arg}: expected a CPU tensor, got one on {x.device}")
        x = x.detach()
        if not x.is_contiguous():
            raise ValueError(f"{fn}: {arg}: expected a contiguous tensor (call .contiguous()), got strides "
                             f"{tuple(x.stride())} for shape {tuple(x.shape)}")
        if str(x.dtype) != "torch.float32":
            raise ValueError(f"{fn}: {arg}: expected dtype float32, got {x.dtype}")
        return x.numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{fn}: {arg}: expected a numpy array or torch tensor, got {_describe(x)}")
    if x.dtype != np.float32:
        raise ValueError(f"{fn}: {arg}: expected dtype float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {arg}: expected a C-contiguous array (np.ascontiguousarray), got strides "
                         f"{x.strides} for shape {x.shape}")
    return x


def optional_float_in(x, fn: str, arg: str):
    return None if x is None else float_in(x, fn, arg)


def mask_in(m, fn: str, arg: str):
    """m (None, bool or integer numpy array / torch tensor) as a C-contiguous bool array, or None.

    Raises ValueError for floating-point (additive) masks, which tokenmix does not take.
    """
    if m is None:
        return None
    if is_torch(m):
        if m.device.type != "cpu":
            raise ValueError(f"{fn}: {arg}: expected a CPU tensor, got one on {m.device}")
        m = m.detach().cpu().numpy()
    if not isinstance(m, np.ndarray):
        raise ValueError(f"{fn}: {arg}: expected a numpy array or torch tensor, got {_describe(m)}")
    if m.dtype == np.bool_:
        return np.ascontiguousarray(m)
    if np.issubdtype(m.dtype, np.integer):
        return np.ascontiguousarray(m != 0)
    raise ValueError(f"{fn}: {arg}: expected a bool (or integer) mask, got dtype {m.dtype} "
                     "(floating-point additive masks are not supported)")


def like(out, torch_out: bool):
    """out (numpy array or None) as a torch tensor when torch_out (no copy)."""
    if out is None or not torch_out:
        return out
    import torch

    return torch.from_numpy(out)


def any_torch(*xs) -> bool:
    return any(is_torch(x) for x in xs)
