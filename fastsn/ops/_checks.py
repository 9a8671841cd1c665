"""Argument checks for the Python-side backends (reference and Triton), worded as the C++ TORCH_CHECKs,
so that every backend rejects bad input with the same message; and the accumulation-dtype rule they share."""
import operator

import torch

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a tensor dtype: float64 stays, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(t: object, op: str, arg: str) -> None:
    """Raise TypeError unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}(): argument '{arg}' must be a Tensor, got {type(t).__name__}")


def check_floating(t: torch.Tensor, op: str, arg: str) -> None:
    """Raise RuntimeError unless ``t`` is float16, bfloat16, float32 or float64 (as C++'s check_floating)."""
    if t.dtype not in FLOATING_DTYPES:
        dtype = str(t.dtype).replace("torch.", "")
        raise RuntimeError(f"{op}(): argument '{arg}' must be float16, bfloat16, float32 or float64, got {dtype}")


def schema_int(value: object, op: str, arg: str) -> int:
    """``value`` as an int, as an op's schema takes it: a float is refused there (a RuntimeError), not truncated, and
    the Python-side backends refuse it alike."""
    try:
        return operator.index(value)
    except TypeError:
        raise RuntimeError(f"{op}(): argument '{arg}' must be an int, got {type(value).__name__}") from None


def positive_int(value: object, where: str, arg: str, alternatives: str = "") -> int:
    """``value`` as a Python int if it is an integer >= 1 (an int, numpy integer or integer 0-d tensor, as torch's
    modules take sizes; not a bool, a float or a string), else a ValueError naming ``arg``.

    Args:
        value: the argument; where: the callable, e.g. "MinibatchStdDev()"; arg: its name; alternatives: text
            appended to "a positive int" (e.g. " or None").
    """
    index = None
    if not isinstance(value, bool):
        try:
            index = operator.index(value)
        except TypeError:
            pass
    if index is None or index < 1:
        raise ValueError(f"{where}: argument '{arg}' must be a positive int{alternatives}, got {value!r}")
    return index
