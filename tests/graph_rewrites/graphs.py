"""Small hand-built gated-MLP graphs, with knobs for every form and every near miss."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, D_FF = 8, 12
ACT_FORMS = ("silu", "silu_rev", "swish", "swish_default", "quick_gelu", "gelu", "gelu_none",
             "gelu_tanh", "gelu_erf_dec", "gelu_tanh_dec", "gelu_tanh_ts", "gelu_tanh_ts_rev",
             "gelu_tanh_ts_identity", "silu_exp", "silu_per_channel", "tanh", "sigmoid_only", "swish_alpha2",
             "quick_gelu_1702", "relu", "none")
# Forms only the evaluated fusion (the activation recognised by what it computes) fuses:
# MatMul projections only.
EVALUATED_FORMS = ("gelu_tanh_ts", "gelu_tanh_ts_rev", "gelu_tanh_ts_identity", "silu_exp")
# Packed gate/up projections: one MatMul, then these splitters (graphs.gated_mlp(packed=...)).
PACKED = ("split", "split_axis2", "split_sizes", "slice", "slice_interleaved", "slice_shape")
INT64_MAX = 2**63 - 1


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

    def constant(self, value: float) -> str:
        """A scalar from a Constant node (as the TorchScript exporter writes them)."""
        tensor = numpy_helper.from_array(np.array(value, dtype=helper.tensor_dtype_to_np_dtype(self.dtype)))
        name = self.name("k")
        self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("n_Constant"), value=tensor))
        return name

    def ints(self, values: list[int]) -> str:
        """A 1-D int64 Constant node (slice bounds, axes, split sizes)."""
        name = self.name("i")
        self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("n_Constant"),
                                           value=numpy_helper.from_array(np.array(values, dtype=np.int64))))
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
    if form == "gelu_tanh_ts":
        # What the TorchScript exporter writes at opset 18 (Gemma's gelu_pytorch_tanh): g³ as
        # two Muls, constants as Constant nodes on the left.
        cube = b.op("Mul", [g, b.op("Mul", [g, g])])
        inner = b.op("Mul", [b.constant(math.sqrt(2.0 / math.pi)),
                             b.op("Add", [g, b.op("Mul", [b.constant(0.044715), cube])])])
        half = b.op("Mul", [g, b.op("Add", [b.constant(1.0), b.op("Tanh", [inner])])])
        return b.op("Mul", [b.constant(0.5), half])
    if form == "gelu_tanh_ts_rev":
        # Every operand the other way round, 0.5 applied first, g³ as (g·g)·g.
        cube = b.op("Mul", [b.op("Mul", [g, g]), g])
        inner = b.op("Mul", [b.op("Add", [b.op("Mul", [cube, b.constant(0.044715)]), g]),
                             b.constant(math.sqrt(2.0 / math.pi))])
        return b.op("Mul", [b.op("Mul", [g, b.constant(0.5)]),
                            b.op("Add", [b.op("Tanh", [inner]), b.constant(1.0)])])
    if form == "gelu_tanh_ts_identity":
        # Scalars as initializers read through Identity nodes (equal initializers merged).
        def scalar(value: float) -> str:
            return b.op("Identity", [b.scalar(value)])
        cube = b.op("Pow", [g, scalar(3.0)])
        inner = b.op("Mul", [scalar(math.sqrt(2.0 / math.pi)),
                             b.op("Add", [g, b.op("Mul", [scalar(0.044715), cube])])])
        return b.op("Mul", [b.op("Mul", [scalar(0.5), g]), b.op("Add", [b.op("Tanh", [inner]), scalar(1.0)])])
    if form == "silu_exp":  # g / (1 + exp(-g))
        return b.op("Div", [g, b.op("Add", [b.constant(1.0), b.op("Exp", [b.op("Neg", [g])])])])
    if form == "silu_per_channel":  # g * sigmoid(g * c), c a [D_FF] vector (of ones)
        c = b.name("c")
        b.inits.append(numpy_helper.from_array(np.ones(D_FF, helper.tensor_dtype_to_np_dtype(b.dtype)), c))
        return b.op("Mul", [g, b.op("Sigmoid", [b.op("Mul", [g, c])])])
    if form == "tanh":
        return b.op("Mul", [g, b.op("Tanh", [g])])
    if form == "silu_plus_x8":  # silu(g) + 1e-10 g^8: within 2e-4 of silu on [-6, 6], not beyond
        return b.op("Add", [b.op("Mul", [g, b.op("Sigmoid", [g])]),
                            b.op("Mul", [b.scalar(1e-10), b.op("Pow", [g, b.scalar(8.0)])])])
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
    zero_biases_merged: bool = False,
    packed: str | None = None,
    packed_order: str = "gate_first",
    packed_bounds: tuple[tuple[int, int], tuple[int, int]] | None = None,
    packed_width: int = 2 * D_FF,
) -> onnx.ModelProto:
    """``layers`` gated MLPs in a chain (with a residual Add), in the chosen form.

    ``weights``: ``init`` (initializers), ``constant`` (Constant nodes), ``transpose``
    (``Transpose`` of a [N, K] initializer), ``identity`` (``Identity`` of an initializer),
    ``input`` (graph inputs: not constant), ``dequantize`` (``DequantizeLinear`` of int8
    initializers), ``matmulnbits`` (``com.microsoft::MatMulNBits`` projections, 4 bits).
    ``zero_biases_merged``: zero biases, stored once per size and read through ``Identity``
    nodes everywhere but at their first use (what the TorchScript exporter writes).
    ``packed``: gate and up from one MatMul of a [D, ``packed_width``] weight, split by
    :data:`PACKED`'s ``split`` (``num_outputs=2``), ``split_axis2`` (the same at ``axis=2``, as
    the dynamo exporter writes it), ``split_sizes``, ``slice`` (constant
    bounds, or ``packed_bounds``: the gate's and the up's [start, end)), ``slice_interleaved``
    (alternate columns: step-2 slices) or ``slice_shape``
    (bounds from Shape/Gather/Add/Div/Mul, as the TorchScript exporter writes ``chunk(2)``);
    ``packed_order``: which half is the gate.
    ``mutate(builder, values)`` may add nodes and return extra graph outputs.
    ``gemm_alpha``: 2-D input and ``Gemm(x, W.T, [B], transB=1, alpha=...)`` projections.
    """
    b = Builder(seed, dtype)
    x = "x"
    extra_inputs: list[onnx.ValueInfoProto] = []
    extra_outputs: list[onnx.ValueInfoProto] = []
    merged: dict[int, str] = {}

    def w(shape: tuple[int, ...]) -> str:
        if weights == "constant":
            return b.weight(shape, as_constant=True)
        if weights == "transpose":
            return b.op("Transpose", [b.weight(tuple(reversed(shape)))], perm=[1, 0])
        if weights == "identity":
            return b.op("Identity", [b.weight(shape)])
        if weights == "input":
            name = b.name("w_in")
            extra_inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
            return name
        if weights == "dequantize":
            q = numpy_helper.from_array(b.rng.integers(-8, 8, shape).astype(np.int8), b.name("q"))
            b.inits.append(q)
            return b.op("DequantizeLinear", [q.name, b.scalar(0.05)])
        return b.weight(shape)

    def bias(size: int) -> str:
        if not zero_biases_merged:
            return b.weight((size,))
        if size not in merged:
            merged[size] = b.name("zero_bias")
            b.inits.append(numpy_helper.from_array(np.zeros(size, helper.tensor_dtype_to_np_dtype(dtype)), merged[size]))
            return merged[size]
        return b.op("Identity", [merged[size]])

    def project(v: str, shape: tuple[int, ...]) -> str:
        if weights != "matmulnbits":
            return b.op("MatMul", [v, w(shape)])
        k, n = shape
        blocks, block = -(-k // 16), 16
        q = numpy_helper.from_array(b.rng.integers(0, 256, (n, blocks, block // 2)).astype(np.uint8), b.name("q4"))
        scales = numpy_helper.from_array((b.rng.random(n * blocks) * 0.05).astype(np.float32), b.name("scales"))
        b.inits += [q, scales]
        return b.op("MatMulNBits", [v, q.name, scales.name], domain="com.microsoft", K=k, N=n, bits=4,
                    block_size=block)

    if gemm_alpha is not None:
        return _gemm_mlp(b, form, biased, gemm_alpha, dtype, opset)
    for _ in range(layers):
        values: dict[str, str] = {}
        if packed is None:
            gate, up = project(x, w_gate_shape), project(x, w_up_shape)
        else:
            values["packed_weight"] = w((D, packed_width))
            gate, up = _packed_parts(b, b.op("MatMul", [x, values["packed_weight"]]), packed, packed_bounds)
            if packed_order == "up_first":
                gate, up = up, gate
        if biased:
            gate = b.op("Add", [gate, bias(bias_shape[0]) if bias_shape == (D_FF,) else b.weight(bias_shape)])
            up = b.op("Add", [bias(w_up_shape[-1]), up])
        act = activation(b, gate, form)
        prod = b.op("Mul", [act, up] if product_order == "act_first" else [up, act])
        down = project(prod, w_down_shape)
        if biased:
            down = b.op("Add", [down, bias(D)])
        values.update(x=x, gate=gate, up=up, act=act, prod=prod, down=down)
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


def _packed_parts(b: Builder, p: str, packed: str,
                  bounds: tuple[tuple[int, int], tuple[int, int]] | None) -> tuple[str, str]:
    """The two parts of the packed projection ``p``, in order."""
    if packed in ("split", "split_axis2", "split_sizes"):
        first, second = b.name("part"), b.name("part")
        inputs, attrs = ([p, b.ints([D_FF, D_FF])], {}) if packed == "split_sizes" else ([p], dict(num_outputs=2))
        b.nodes.append(helper.make_node("Split", inputs, [first, second], name=b.name("n_Split"),
                                        axis=2 if packed == "split_axis2" else -1, **attrs))
        return first, second
    if packed == "slice":
        (s0, e0), (s1, e1) = bounds or ((0, D_FF), (D_FF, INT64_MAX))
        axes = b.ints([-1])
        return (b.op("Slice", [p, b.ints([s0]), b.ints([e0]), axes]),
                b.op("Slice", [p, b.ints([s1]), b.ints([e1]), axes]))
    if packed == "slice_interleaved":  # gate and up columns alternate (step-2 slices)
        axes, step = b.ints([-1]), b.ints([2])
        return (b.op("Slice", [p, b.ints([0]), b.ints([INT64_MAX]), axes, step]),
                b.op("Slice", [p, b.ints([1]), b.ints([INT64_MAX]), axes, step]))
    if packed == "slice_by_batch":  # bounds from the batch size: right for batch 2 only
        batch = b.op("Gather", [b.op("Shape", [p]), b.ints([0])], axis=0)
        middle, last = b.op("Mul", [batch, b.ints([D_FF // 2])]), b.ints([-1])
        return (b.op("Slice", [p, b.ints([0]), middle, last]),
                b.op("Slice", [p, middle, b.op("Mul", [batch, b.ints([D_FF])]), last]))
    if packed == "slice_shape":  # torch's chunk(2), as the TorchScript exporter writes it
        last = b.ints([-1])
        half = b.op("Div", [b.op("Add", [b.op("Gather", [b.op("Shape", [p]), last], axis=0), b.ints([1])]),
                            b.ints([2])])
        middle = b.op("Mul", [half, b.ints([1])])
        return (b.op("Slice", [p, b.ints([0]), middle, last]),
                b.op("Slice", [p, middle, b.op("Mul", [half, b.ints([2])]), last]))
    raise ValueError(packed)


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
