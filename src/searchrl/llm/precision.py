"""One rule for the number format models run in, shared by training, augmentation and agents.

``precision="auto"`` picks bfloat16 wherever the hardware multiplies it natively — a GPU with
bf16 support, or a CPU with AVX512-BF16 / AMX tiles (there a bf16 matrix product runs several
times faster than fp32, see ``benchmarks/rl_step.py``) — and float32 elsewhere.
``"bf16"`` and ``"fp32"`` force a format.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from searchrl.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str | None, device: str) -> Literal["bf16", "fp32"]:
    """``"bf16"`` or ``"fp32"`` for ``precision`` on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:0"`` …)."""
    if precision in (None, "auto"):
        if str(device).startswith("cuda"):
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def torch_dtype(precision: str | None, device: str) -> Any:
    """The ``torch.dtype`` of :func:`resolve_precision`."""
    import torch

    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32


__all__ = ["PRECISIONS", "Precision", "cpu_has_native_bf16", "resolve_precision", "torch_dtype"]
