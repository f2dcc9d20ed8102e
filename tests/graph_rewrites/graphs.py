"""Small hand-built gated-MLP graphs, with knobs for every form and every near miss."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, D_FF = 8, 12
ACT_FORMS = ("silu", "silu_rev", "swish", "swish_default", "quick_gelu", "gelu", "gelu_none",
             "gelu_tanh", "gelu_erf_dec", "gelu_tanh_dec", "tanh", "sigmoid_only", "swish_alpha2",
             "quick_gelu_1702", "relu", "none")


class Builder:
    """Accumulates nodes and initializers of one graph."""

    def __init__(self, seed: int = 0, dtype: int = TensorProto.FLOAT) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dtype = dtype
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(f"n_{op_type}"),
                                           domain=domain, **attrs))
        return out

    def weight(self, shape: tuple[int, ...], *, as_constant: bool = False) -> str:
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        arr = (self.rng.standard_normal(shape) * 0.3).astype(np_dtype)
        name = self.name("w")
        tensor = numpy_helper.from_array(arr, name)
        if as_constant:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("n_Constant"),
                                               value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def scalar(self, value: float) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(
            np.array(value, dtype=helper.tensor_dtype_to_np_dtype(self.dtype)), name))
        return name


def activation(b: Builder, g: str, form: str) -> str:
    if form == "silu":
        return b.op("Mul", [g, b.op("Sigmoid", [g])])
    if form == "silu_rev":
        return b.op("Mul", [b.op("Sigmoid", [g]), g])
    if form == "swish":
        return b.op("Swish", [g], alpha=1.0)
    if form == "swish_default":  # no attribute: alpha defaults to 1.0, a silu
        return b.op("Swish", [g])
    if form == "swish_alpha2":
        return b.op("Swish", [g], alpha=2.0)
    if form == "quick_gelu":
        return b.op("QuickGelu", [g], domain="com.microsoft", alpha=1.0)
    if form == "quick_gelu_1702":
        return b.op("QuickGelu", [g], domain="com.microsoft", alpha=1.702)
    if form == "gelu":
        return b.op("Gelu", [g])
    if form == "gelu_none":
        return b.op("Gelu", [g], approximate="none")
    if form == "gelu_tanh":
        return b.op("Gelu", [g], approximate="tanh")
    if form == "gelu_erf_dec":
        erf = b.op("Erf", [b.op("Div", [g, b.scalar(math.sqrt(2.0))])])
        return b.op("Mul", [b.op("Mul", [g, b.op("Add", [erf, b.scalar(1.0)])]), b.scalar(0.5)])
    if form == "gelu_tanh_dec":
        cube = b.op("Pow", [g, b.scalar(3.0)])
        inner = b.op("Mul", [b.scalar(math.sqrt(2.0 / math.pi)),
                             b.op("Add", [g, b.op("Mul", [b.scalar(0.044715), cube])])])
        return b.op("Mul", [b.op("Mul", [b.scalar(0.5), g]),
                            b.op("Add", [b.op("Tanh", [inner]), b.scalar(1.0)])])
    if form == "tanh":
        return b.op("Mul", [g, b.op("Tanh", [g])])
    if form == "sigmoid_only":
        return b.op("Sigmoid", [g])
    if form == "relu":
        return b.op("Relu", [g])
    if form == "none":  # a bilinear layer: no activation at all
        return g
    raise ValueError(form)


def gated_mlp(
    *,
    form: str = "silu",
    product_order: str = "act_first",
    biased: bool = False,
    weights: str = "init",
    opset: int = 20,
    dtype: int = TensorProto.FLOAT,
    layers: int = 1,
    mutate: Callable[[Builder, dict[str, str]], list[onnx.ValueInfoProto]] | None = None,
    w_up_shape: tuple[int, ...] = (D, D_FF),
    w_gate_shape: tuple[int, ...] = (D, D_FF),
    w_down_shape: tuple[int, ...] = (D_FF, D),
    bias_shape: tuple[int, ...] = (D_FF,),
    seed: int = 0,
    gemm_alpha: float | None = None,
) -> onnx.ModelProto:
    """``layers`` gated MLPs in a chain (with a residual Add), in the chosen form.

    ``weights``: ``init`` (initializers), ``constant`` (Constant nodes), ``transpose``
    (``Transpose`` of a [N, K] initializer), ``input`` (graph inputs: not constant).
    ``mutate(builder, values)`` may add nodes and return extra graph outputs.
    ``gemm_alpha``: 2-D input and ``Gemm(x, W.T, [B], transB=1, alpha=...)`` projections.
    """
    b = Builder(seed, dtype)
    x = "x"
    extra_inputs: list[onnx.ValueInfoProto] = []
    extra_outputs: list[onnx.ValueInfoProto] = []

    def w(shape: tuple[int, ...]) -> str:
        if weights == "constant":
            return b.weight(shape, as_constant=True)
        if weights == "transpose":
            return b.op("Transpose", [b.weight(tuple(reversed(shape)))], perm=[1, 0])
        if weights == "input":
            name = b.name("w_in")
            extra_inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
            return name
        return b.weight(shape)

    if gemm_alpha is not None:
        return _gemm_mlp(b, form, biased, gemm_alpha, dtype, opset)
    for _ in range(layers):
        gate = b.op("MatMul", [x, w(w_gate_shape)])
        up = b.op("MatMul", [x, w(w_up_shape)])
        if biased:
            gate = b.op("Add", [gate, b.weight(bias_shape)])
            up = b.op("Add", [up, b.weight((w_up_shape[-1],))])
        act = activation(b, gate, form)
        prod = b.op("Mul", [act, up] if product_order == "act_first" else [up, act])
        down = b.op("MatMul", [prod, w(w_down_shape)])
        if biased:
            down = b.op("Add", [down, b.weight((D,))])
        values = dict(x=x, gate=gate, up=up, act=act, prod=prod, down=down)
        if mutate is not None:
            extra_outputs += mutate(b, values)
        x = b.op("Add", [x, down]) if w_down_shape[-1] == D else down
    graph = helper.make_graph(
        b.nodes, "gated_mlp",
        [helper.make_tensor_value_info("x", dtype, ["batch", "seq", D]), *extra_inputs],
        [helper.make_tensor_value_info(x, dtype, ["batch", "seq", w_down_shape[-1]]), *extra_outputs],
        b.inits,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    return onnx.shape_inference.infer_shapes(model)


def feeds(model: onnx.ModelProto, seed: int = 1, batch: int = 2, seq: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        dims = [d.dim_value if d.dim_value else {"batch": batch, "seq": seq, "n": batch * seq}[d.dim_param]
                for d in t.shape.dim]
        out[value.name] = rng.standard_normal(dims).astype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return out


def _gemm_mlp(b: Builder, form: str, biased: bool, alpha: float, dtype: int, opset: int) -> onnx.ModelProto:
    def proj(v: str, n: int, k: int) -> str:
        inputs = [v, b.weight((n, k))] + ([b.weight((n,))] if biased else [])
        return b.op("Gemm", inputs, transB=1, alpha=alpha, beta=1.0)

    prod = b.op("Mul", [activation(b, proj("x", D_FF, D), form), proj("x", D_FF, D)])
    y = proj(prod, D, D_FF)
    graph = helper.make_graph(b.nodes, "gemm_mlp", [helper.make_tensor_value_info("x", dtype, ["n", D])],
                              [helper.make_tensor_value_info(y, dtype, ["n", D])], b.inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=opsets, ir_version=10))
