"""The ``onnxfuse::FusedGatedMLP`` contract shared by graph_rewrites, kernels and pipeline.

    Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down

Inputs X [..., d], W_gate [d, d_ff], W_up [d, d_ff], W_down [d_ff, d], optional B_gate
[d_ff], B_up [d_ff], B_down [d]; output Y [..., d]. Weights use ONNX MatMul layout [K, N].
"""

from __future__ import annotations

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACTIVATION",
    "DOMAIN",
    "ELEMENT_TYPES",
    "INPUTS",
    "OP_TYPE",
    "OUTPUTS",
    "VERSION",
]

DOMAIN = "onnxfuse"
OP_TYPE = "FusedGatedMLP"
VERSION = 1
INPUTS = ("X", "W_gate", "W_up", "W_down", "B_gate", "B_up", "B_down")
OUTPUTS = ("Y",)
# Required inputs are the first four; the three biases are optional (empty name = absent).
REQUIRED_INPUTS = 4
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DEFAULT_ACTIVATION = "silu"
ELEMENT_TYPES = ("float32", "float16", "bfloat16")
