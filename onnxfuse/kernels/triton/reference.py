"""The pure torch reference of ``onnxfuse::FusedGatedMLP``: the oracle of every kernel test
and the baseline of every benchmark; and the kernels' one map from the registry's element
types to torch dtypes (:func:`torch_dtype`).

    Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down
"""

from __future__ import annotations

import math

import torch

from onnxfuse import ops
from onnxfuse.errors import KernelError

__all__ = ["TORCH_DTYPES", "activate", "fused_gated_mlp_reference", "torch_dtype"]

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in ops.ELEMENT_TYPES}
"""The torch dtype of each element type a fused op takes (:data:`onnxfuse.ops.ELEMENT_TYPES`,
whose names are torch's)."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of the registry's element type ``name`` (``float32``, ...).

    Raises:
        KernelError: ``name`` is not one of :data:`onnxfuse.ops.ELEMENT_TYPES`.
    """
    if name not in TORCH_DTYPES:
        raise KernelError(f"element type {name!r} is not one the fused ops take: choose one of "
                          f"{', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def activate(g: torch.Tensor, activation: str) -> torch.Tensor:
    """The op's activations, written as the formulas the kernels implement."""
    if activation == "silu":
        return g * torch.sigmoid(g)
    if activation == "gelu":
        return 0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g**3)))
    raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ops.FUSED_GATED_MLP.attribute('activation').values)}")


def fused_gated_mlp_reference(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    *,
    activation: str = ops.FUSED_GATED_MLP.attribute("activation").default,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The op in plain torch.

    Args:
        x: ``[..., d]``; weights ``[d, d_ff]``, ``[d, d_ff]``, ``[d_ff, d]``; biases 1-D.
        activation: ``silu``, ``gelu`` or ``gelu_tanh``.
        compute_dtype: compute in this dtype (``torch.float64`` for the oracle) and return
            it; ``None`` computes and returns in ``x.dtype``.
    """
    dtype = compute_dtype or x.dtype

    def c(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype)

    xc, wg, wu, wd = c(x), c(w_gate), c(w_up), c(w_down)
    gate = xc @ wg
    up = xc @ wu
    if b_gate is not None:
        gate = gate + c(b_gate)
    if b_up is not None:
        up = up + c(b_up)
    y = (activate(gate, activation) * up) @ wd
    if b_down is not None:
        y = y + c(b_down)
    return y
