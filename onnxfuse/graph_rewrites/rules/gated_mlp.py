"""Gated MLPs, ``down(act(gate(x)) * up(x))``, → ``onnxfuse::FusedGatedMLP``.

Everything this family decides is here: the activation forms it recognises, the pattern
(one :class:`GatedMLPFusion` per form, bias and projection kind; onnxscript's ``commute()``
covers every operand order of the Muls and Adds), what is safe to fuse
(:func:`check_candidate`, shared by the rule and the near-miss report, so a rejected
candidate carries the same reason in both), the pre-filter that picks the fusions worth
trying at a node, how a fresh fused node is finished, and the near-miss scan.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult

from onnxfuse import ops
from onnxfuse.graph_rewrites import _safety, _scan
from onnxfuse.graph_rewrites._family import Family, FusedNode, Fusion, NearMiss

__all__ = ["ACTIVATION_FORMS", "FAMILY", "ActivationForm", "GatedMLPFusion", "check_candidate"]

_SPEC = ops.FUSED_GATED_MLP
_ELEMENT_TYPES = frozenset(ir.DataType(ops.ELEMENT_TYPES[t]) for t in _SPEC.element_types)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------- activation forms

def _silu_mul(op: Any, g: Any) -> Any:
    return op.Mul(g, op.Sigmoid(g))


def _swish(op: Any, g: Any) -> Any:
    return op.Swish(g, alpha=1.0)


def _swish_default(op: Any, g: Any) -> Any:
    # No attribute: alpha defaults to 1.0, a silu. Refuse any other attribute, or this would
    # also match Swish(alpha=2.0).
    return op.Swish(g, _allow_other_attributes=False)


def _quick_gelu(op: Any, g: Any) -> Any:
    return op.QuickGelu(g, alpha=1.0, _domain="com.microsoft")


def _gelu_op(op: Any, g: Any) -> Any:
    return op.Gelu(g, approximate="none")


def _gelu_op_default(op: Any, g: Any) -> Any:
    # No attribute: approximate defaults to "none". Refuse any other attribute, or this
    # would also match Gelu(approximate="tanh").
    return op.Gelu(g, _allow_other_attributes=False)


def _gelu_tanh_op(op: Any, g: Any) -> Any:
    return op.Gelu(g, approximate="tanh")


def _gelu_erf(op: Any, g: Any) -> Any:
    # 0.5 * g * (1 + erf(g / sqrt(2))), as torch's decomposition and the TorchScript
    # exporter write it below opset 20.
    return op.Mul(op.Mul(g, op.Add(op.Erf(op.Div(g, _SQRT_2)), 1.0)), 0.5)


def _gelu_tanh(op: Any, g: Any) -> Any:
    # 0.5 * g * (1 + tanh(sqrt(2/pi) * (g + 0.044715 * g^3)))
    inner = op.Mul(_SQRT_2_OVER_PI, op.Add(g, op.Mul(0.044715, op.Pow(g, 3.0))))
    return op.Mul(op.Mul(0.5, g), op.Add(op.Tanh(inner), 1.0))


@dataclasses.dataclass(frozen=True)
class ActivationForm:
    """One way a graph writes an activation.

    Attributes:
        pattern: builds the form's pattern from the gate value.
        activation: the fused op's ``activation`` attribute for it.
        key_op: an op type only this form's pattern has among the forms of a different
            ``key_op``: the pre-filter tries the form where its key op lies between the
            projections and the product.
    """

    pattern: Callable[[Any, Any], Any]
    activation: str
    key_op: str


ACTIVATION_FORMS: dict[str, ActivationForm] = {
    "silu": ActivationForm(_silu_mul, "silu", "Sigmoid"),
    "swish": ActivationForm(_swish, "silu", "Swish"),
    "swish_default": ActivationForm(_swish_default, "silu", "Swish"),
    "quick_gelu": ActivationForm(_quick_gelu, "silu", "QuickGelu"),
    "gelu": ActivationForm(_gelu_op, "gelu", "Gelu"),
    "gelu_default": ActivationForm(_gelu_op_default, "gelu", "Gelu"),
    "gelu_tanh": ActivationForm(_gelu_tanh_op, "gelu_tanh", "Gelu"),
    "gelu_erf_decomposed": ActivationForm(_gelu_erf, "gelu", "Erf"),
    "gelu_tanh_decomposed": ActivationForm(_gelu_tanh, "gelu_tanh", "Tanh"),
}
"""Every activation form this family fuses, by name (the name appears in the rule name)."""


# ------------------------------------------------------------------------------ the rule

class GatedMLPFusion(Fusion):
    """``MatMul(act(MatMul(x, Wg) [+ Bg]) * (MatMul(x, Wu) [+ Bu]), Wd) [+ Bd]`` → one node.

    Weights may be initializers, Constant outputs or ``Transpose(perm=[1, 0])`` of either;
    the fused node reads the same values, so no weight is copied.

    With ``gemm``, the three projections are ``Gemm(x, W, [B], transB=1)`` (exporters emit
    these for 2-D inputs). The op wants [K, N] weights, so the rewrite stores each weight
    transposed once, and the function body reads it back through a Transpose (see
    :func:`_untranspose_function`), so the weights are still stored once.

    Attributes:
        form: the key of :data:`ACTIVATION_FORMS`.
        biased: the three projections add a bias.
        gemm: the projections are Gemms rather than MatMuls.
        activation: the fused node's ``activation`` attribute.
        key_op: the form's key op (:class:`ActivationForm`).
        root_op: the op type of the pattern's last node (where the matcher starts).
    """

    def __init__(self, form: str, *, biased: bool, gemm: bool = False) -> None:
        self.form = form
        self.biased = biased
        self.gemm = gemm
        self._form = ACTIVATION_FORMS[form]
        self.activation = self._form.activation
        self.key_op = self._form.key_op
        self.root_op = "Gemm" if gemm else "Add" if biased else "MatMul"
        flags = (",bias" if biased else "") + (",gemm" if gemm else "")
        super().__init__(f"{_SPEC.op_type}[{form}{flags}]", as_function=True)

    def pattern(self, op: Any, x: Any, w_gate: Any, w_up: Any, w_down: Any, b_gate: Any,
                b_up: Any, b_down: Any) -> Any:
        act = self._form.pattern
        if self.gemm:
            def proj(v: Any, w: Any, b: Any) -> Any:
                return op.Gemm(v, w, b, transB=1) if self.biased else op.Gemm(v, w, transB=1)
            product = op.Mul(act(op, proj(x, w_gate, b_gate)), proj(x, w_up, b_up))
            return proj(product, w_down, b_down)
        gate = op.MatMul(x, w_gate)
        up = op.MatMul(x, w_up)
        if self.biased:
            gate, up = op.Add(gate, b_gate), op.Add(up, b_up)
        down = op.MatMul(op.Mul(act(op, gate), up), w_down)
        return op.Add(down, b_down) if self.biased else down

    # onnxscript calls check(context, **bindings): the pattern's variables as named parameters
    # are its documented form, narrower than the base's check(op, *args, **kwargs).
    def check(self, context: Any, x: ir.Value, w_gate: ir.Value,  # type: ignore[override]  # named bindings
              w_up: ir.Value, w_down: ir.Value, b_gate: ir.Value | None = None,
              b_up: ir.Value | None = None, b_down: ir.Value | None = None,
              **_: Any) -> MatchResult:
        result = MatchResult()
        for node in context.nodes:
            # None of the matched ops has a subgraph; a (malformed) node with one cannot be
            # copied into the function body.
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                   for a in node.attributes.values()):
                return result.fail(f"{node.op_type} node {node.name} has a subgraph attribute", node)
        if self.gemm:
            for node in context.nodes:
                if node.op_type == "Gemm" and not _safety.gemm_attributes_ok(node):
                    return result.fail("a Gemm is not alpha=beta=1, transA=0, transB=1", node)
        reason = check_candidate(
            x, w_gate, w_up, w_down, (b_gate, b_up, b_down) if self.biased else None,
            gemm=self.gemm,
        )
        return result.fail(reason.text, reason.sources[0] if reason.sources else None) if reason else result

    def rewrite(self, op: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
                b_down: ir.Value | None = None, **_: Any) -> Any:
        weights = [w_gate, w_up, w_down]
        if self.gemm:
            weights = [_transposed(op, w) for w in weights]
        inputs: list[ir.Value | None] = [x, *weights]
        if self.biased:
            inputs += [b_gate, b_up, b_down]
        return op.FusedGatedMLP(*inputs, activation=self.activation, _domain=_SPEC.domain,
                                _version=_SPEC.version)


FUSIONS: tuple[GatedMLPFusion, ...] = tuple(
    GatedMLPFusion(form, biased=b, gemm=g)
    for form in ACTIVATION_FORMS for b in (False, True) for g in (False, True))
"""Every form, biased and not, MatMul and Gemm, in priority order."""


# -------------------------------------------------------------------------------- safety

def check_candidate(x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                    biases: Sequence[ir.Value | None] | None, *,
                    gemm: bool = False) -> _safety.Reason | None:
    """``None`` if fusing is safe, else the first :class:`~._safety.Reason` it is not:
    constant 2-D weights of consistent shapes, one element type the op takes, 1-D biases.

    ``gemm``: the weights are in Gemm(transB=1) layout, [N, K] instead of [K, N]."""
    Reason = _safety.Reason
    weights = {"W_gate": w_gate, "W_up": w_up, "W_down": w_down}
    shapes: dict[str, tuple[int, ...]] = {}
    for role, w in weights.items():
        ok, shape = _safety.is_constant(w), _safety.constant_shape(w)
        if not ok:
            return Reason(f"{role} ({w.name}) is not a constant weight", (w,))
        # A Gemm fusion stores each weight transposed at rewrite time: it needs the value
        # itself, and one no caller can replace (an initializer that is also a graph input
        # can be fed another value; the copy would silently ignore it).
        if gemm and w.const_value is None:
            return Reason(f"{role} ({w.name}) is not an initializer or Constant: a Gemm fusion "
                          "stores it transposed", (w,))
        if gemm and w.is_graph_input():
            return Reason(f"{role} ({w.name}) is also a graph input, so a caller may override it: "
                          "a Gemm fusion would store a transposed copy", (w,))
        if shape is None or len(shape) != 2:
            return Reason(f"{role} ({w.name}) is not 2-D with a static shape: {shape}", (w,))
        shapes[role] = tuple(reversed(shape)) if gemm else shape
    (d, d_ff), (d_u, d_ff_u), (d_ff_d, d_d) = shapes["W_gate"], shapes["W_up"], shapes["W_down"]
    if (d, d_ff) != (d_u, d_ff_u) or (d_ff_d, d_d) != (d_ff, d):
        return Reason(f"weight shapes disagree: W_gate {shapes['W_gate']}, W_up {shapes['W_up']}, "
                      f"W_down {shapes['W_down']} (need [d, d_ff], [d, d_ff], [d_ff, d])",
                      (w_gate, w_up, w_down))
    # X's shape and type are often not annotated inside TorchScript exports: the MatMuls
    # already constrain them, so check only what is known.
    x_dims = x.shape
    if x_dims is not None and len(x_dims) >= 1 and isinstance(x_dims[-1], int) and x_dims[-1] != d:
        return Reason(f"input {x.name} has last dim {x_dims[-1]}, the weights need {d}", (x,))
    dtypes = {role: _safety.element_type(v) for role, v in weights.items()}
    if _safety.element_type(x) is not None:
        dtypes["X"] = _safety.element_type(x)
    if biases is not None:
        for role, b, size in zip(("B_gate", "B_up", "B_down"), biases, (d_ff, d_ff, d), strict=True):
            if b is None:
                return Reason(f"{role} is missing", ())
            if not _safety.is_constant(b):
                return Reason(f"{role} ({b.name}) is not a constant", (b,))
            if _safety.constant_shape(b) != (size,):
                return Reason(f"{role} ({b.name}) has shape {_safety.constant_shape(b)}, need ({size},)", (b,))
            dtypes[role] = _safety.element_type(b)
    dtype = dtypes["W_gate"]
    if dtype is None or len(set(dtypes.values())) != 1:
        text = ", ".join(f"{k} {v.name if v is not None else '?'}" for k, v in dtypes.items())
        return Reason(f"element types disagree or are unknown: {text}", (x,))
    if dtype not in _ELEMENT_TYPES:
        return Reason(f"element type {dtype.name} is not float, float16 or bfloat16", (x,))
    return None


# ------------------------------------------------------- Gemm weights, stored transposed

TRANSPOSED_SUFFIX = "__onnxfuse_T"


def _transposed(op: Any, w: ir.Value) -> ir.Value:
    """An initializer holding ``w`` transposed: the only copy (the original goes), shared by
    every fused node that reads ``w`` (tied weights).

    Lazy: the transpose is computed when the model is saved, one weight at a time, and the
    source's memory map is released right after, so a rewrite holds at most one weight and
    its copy (issue 7's bound: peak RSS < 1.5 x the largest tensor + 512 MiB). Computed
    eagerly, a Gemm-form MLP of 3 x 224 MiB weights peaked at 1470 MiB.
    """
    import numpy as np

    tensor = w.const_value
    if tensor is None:  # check_candidate refuses a Gemm weight with no constant value
        raise ValueError(f"{w.name} has no constant value to transpose")
    base = name = f"{w.name}{TRANSPOSED_SUFFIX}"
    initializers = w.graph.initializers if w.graph is not None else {}
    for i in itertools.count(1):
        existing = initializers.get(name)
        if existing is None:
            break
        if existing.meta.get(_safety.TRANSPOSED_FROM) is w:
            return existing
        name = f"{base}_{i}"  # a model's own initializer of that name: not ours
    final = name

    def transpose() -> ir.TensorProtocol:
        data = np.ascontiguousarray(tensor.numpy().T)
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # its mapped pages would stay resident
        return ir.tensor(data, dtype=tensor.dtype, name=final)

    lazy = ir.LazyTensor(transpose, dtype=tensor.dtype,
                         shape=ir.Shape(tuple(reversed(tensor.shape.numpy()))), name=name)
    value: ir.Value = op.initializer(lazy, name=name)
    value.meta[_safety.TRANSPOSED_FROM] = w
    return value


def _untranspose_function(function: ir.Function) -> None:
    """In a Gemm fusion's body, read each weight back from the transposed copy the fused
    node gets (``Transpose(W_T)``) instead of embedding the original as a Constant: the
    weights are then stored once in the model."""
    inputs = {v.name: v for v in function.inputs}
    for node in list(function):
        if node.op_type != "Constant" or "value" not in node.attributes:
            continue
        tensor = node.attributes["value"].as_tensor()
        source = inputs.get(f"{tensor.name}{TRANSPOSED_SUFFIX}")
        if source is None:
            continue
        transpose = ir.Node("", "Transpose", [source], [ir.AttrInt64s("perm", [1, 0])],
                            name=f"{tensor.name}_transpose")
        function.insert_before(node, transpose)
        ir.convenience.replace_all_uses_with(node.outputs[0], transpose.outputs[0])
        function.remove(node, safe=True)


# ----------------------------------------------------------------------- the pre-filter

def _product_of(node: ir.Node) -> ir.Node | None:
    """The ``Mul`` whose product ``node`` projects down, if ``node`` can end a gated MLP
    (``MatMul(Mul(..), W)``, or a bias ``Add`` after one)."""
    if not _safety.is_standard(node):
        return None
    if node.op_type == "Add":
        for v in node.inputs:
            producer = v.producer() if v is not None else None
            if producer is not None and producer.op_type == "MatMul":
                return _product_of(producer)
        return None
    if node.op_type not in ("MatMul", "Gemm") or not node.inputs or node.inputs[0] is None:
        return None
    producer = node.inputs[0].producer()
    return producer if producer is not None and producer.op_type == "Mul" else None


_BY_KEY: dict[tuple[str, str], list[GatedMLPFusion]] = {}
for _fusion in FUSIONS:
    _BY_KEY.setdefault((_fusion.root_op, _fusion.key_op), []).append(_fusion)


def candidates(node: ir.Node) -> list[GatedMLPFusion]:
    """The fusions that may match with ``node`` as their root: none unless ``node`` projects
    a product down; then those of its op type whose activation's key op lies between the
    projections and the product.

    Why: a rule set tries every rule at every node, and the commuted variants of all forms
    number 1,760; tried everywhere, that took 17 s on the 30-layer SmolLM2 export. A
    structural test and the key op leave a handful of variants at a few nodes per layer.
    """
    product = _product_of(node)
    if product is None:
        return []
    interior, _ = _scan.backward_slice(product.outputs[0])
    found: list[GatedMLPFusion] = []
    for key_op in dict.fromkeys(n.op_type for n in interior):
        found += _BY_KEY.get((node.op_type, key_op), ())
    return found


# ------------------------------------------------------------------- finishing a node

def finish(node: ir.Node, function: ir.Function, rule: str, replaced: tuple[str, ...]) -> FusedNode:
    """Document and type a fresh fused node; return its report entry."""
    _untranspose_function(function)
    w_gate = node.inputs[1]  # the rewrite always gives the fused node its W_gate
    shape = _safety.constant_shape(w_gate) if w_gate is not None else None
    d, d_ff = shape if shape is not None else (0, 0)
    activation = node.attributes["activation"].as_string()
    biased = len(node.inputs) > _SPEC.required_inputs
    formula = _SPEC.describe({"activation": activation}, _SPEC.input_names[:len(node.inputs)])
    node.doc_string = (f"onnxfuse: gated MLP fused by {rule}: {formula}; d={d}, d_ff={d_ff}; "
                       f"the function {_SPEC.qualified_name} (overload {node.overload!r}) holds "
                       "the original nodes")
    node.metadata_props.update({"onnxfuse.d": str(d), "onnxfuse.d_ff": str(d_ff)})
    # Y has the type of W_gate (check_candidate knew it) and the shape of X, where known.
    x, y = node.inputs[0], node.outputs[0]
    dtype = _safety.element_type(w_gate)
    if not y.dtype and dtype is not None:
        y.dtype = dtype
    if x is not None and y.shape is None and x.shape is not None:
        y.shape = x.shape
    return FusedNode(str(node.name), rule, activation, int(d), int(d_ff), biased, replaced)


# ------------------------------------------------------------------------- near misses

def _reason(graph: ir.Graph, down: ir.Node, mul: ir.Node, sides: list[list[ir.Node]],
            roots: list[ir.Node]) -> str:
    """The first reason this candidate is not safe or not recognised."""
    name = _scan.node_name
    outputs = set(graph.outputs)
    if any(r.op_type in _scan.SPLITTERS for r in roots):
        splitter = next(r for r in roots if r.op_type in _scan.SPLITTERS)
        return (f"packed gate/up projection ({splitter.op_type} {name(splitter)} of one MatMul): "
                "not fused yet, the weight would have to be split at rewrite time")
    gemm = down.op_type == "Gemm"
    if {r.op_type for r in roots} | {down.op_type} not in ({"MatMul"}, {"Gemm"}):
        return "the projections mix MatMul and Gemm"
    if gemm and not all(_safety.gemm_attributes_ok(n) for n in [*roots, down]):
        return "a Gemm is not alpha=beta=1, transA=0, transB=1"
    x0, x1 = roots[0].inputs[0], roots[1].inputs[0]
    if x0 is not x1:
        return "gate and up projections read different inputs"
    a, b = mul.inputs[0], mul.inputs[1]
    if a is not None and b is not None and a.shape is not None and b.shape is not None \
            and list(a.shape) != list(b.shape):
        return f"the product Mul {name(mul)} broadcasts: {list(a.shape)} * {list(b.shape)}"
    interior = [mul, *sides[0], *sides[1], *roots]
    members = {id(n) for n in [down, *interior]}
    for node in interior:
        for out in node.outputs:
            if out in outputs:
                return f"{out.name} (from {name(node)}) is a graph output"
            for user, _ in out.uses():
                if id(user) not in members:
                    return f"{out.name} (from {name(node)}) has another consumer: {name(user)}"
    # The gate is the side with the activation: the one with more nodes.
    gate, up = (0, 1) if len(sides[0]) >= len(sides[1]) else (1, 0)
    weights = [roots[gate].inputs[1], roots[up].inputs[1], down.inputs[1]]
    if gemm:
        biases = [n.inputs[2] if len(n.inputs) > 2 else None for n in (roots[gate], roots[up], down)]
    else:
        biases = [_bias_after(roots[gate]), _bias_after(roots[up]), _bias_after(down)]
    w_gate, w_up, w_down = weights
    if x0 is not None and w_gate is not None and w_up is not None and w_down is not None:
        failure = check_candidate(x0, w_gate, w_up, w_down,
                                  biases if any(b is not None for b in biases) else None, gemm=gemm)
        if failure is not None:
            return failure.text
    op_types = sorted({n.op_type for side in sides for n in side})
    if not op_types:
        return "no activation between the projections and the product (a bilinear layer)"
    return (f"the activation (ops: {', '.join(op_types)}) is not one of "
            f"{', '.join(_SPEC.attribute('activation').values)} in a known form")


def _bias_after(node: ir.Node) -> ir.Value | None:
    """The constant added right after ``node``'s output, if any."""
    users = list(node.outputs[0].uses())
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    other = add.inputs[1 - users[0][1]] if len(add.inputs) == 2 else None
    return other if other is not None and _safety.is_constant(other) else None


def scan(graph: ir.Graph) -> list[NearMiss]:
    """Every unfused gated-MLP candidate in ``graph`` with the reason it was left alone.

    A candidate is ``MatMul(Mul(a, b), W)`` where ``a`` and ``b`` each lead back, through
    element-wise ops, to a ``MatMul`` of one shared input.
    """
    found = []
    for down in graph:
        if down.op_type not in ("MatMul", "Gemm") or not _scan.standard_node(down, 2):
            continue
        product = down.inputs[0]  # present: standard_node checked it
        mul = product.producer() if product is not None else None
        if mul is None or mul.op_type != "Mul" or not _scan.standard_node(mul, 2) or None in mul.inputs:
            continue
        factors = [v for v in mul.inputs if v is not None]  # all of them, as just checked
        sides, side_roots = zip(*(_scan.backward_slice(v) for v in factors), strict=True)
        if any(len(r) != 1 for r in side_roots):
            continue  # a side that is not one projection (or a constant scale): not an MLP
        roots = [side_roots[0][0], side_roots[1][0]]
        if roots[0] is roots[1] and roots[0].op_type not in _scan.SPLITTERS:
            continue  # both factors from one projection: not gated
        ordered = [n for n in graph if n in {*sides[0], *sides[1], *roots, mul, down}]
        found.append(NearMiss(_scan.node_name(down), tuple(_scan.node_name(n) for n in ordered),
                              _reason(graph, down, mul, list(sides), roots)))
    return found


FAMILY = Family(op=_SPEC, fusions=FUSIONS, candidates=candidates, finish=finish, scan=scan)
"""The gated-MLP family, as the pass reads it."""
