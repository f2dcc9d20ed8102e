"""Fusion rules: every form of ``down(act(gate(x)) * up(x))`` → ``onnxfuse::FusedGatedMLP``.

One class, parametrised by the activation's form and which biases are present; the
rewriter's ``commute()`` covers every operand order of the Muls and Adds. ``check`` calls
:func:`onnxfuse.graph_rewrites._safety.check_candidate`, the one place that decides what is
safe to fuse, shared with the near-miss report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxfuse import ops
from onnxfuse.graph_rewrites import _safety, _scan

__all__ = ["ACTIVATION_FORMS", "GatedMLPFusion", "all_rules"]

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


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


# form name -> (pattern builder, activation attribute of the fused op). The op that marks
# each form (its "key op") lets the dispatcher try only that form's rules at a candidate.
_KEY_OPS = {"silu": "Sigmoid", "swish": "Swish", "swish_default": "Swish", "quick_gelu": "QuickGelu", "gelu": "Gelu",
            "gelu_default": "Gelu", "gelu_tanh": "Gelu", "gelu_erf_decomposed": "Erf",
            "gelu_tanh_decomposed": "Tanh"}
ACTIVATION_FORMS: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    "silu": (_silu_mul, "silu"),
    "swish": (_swish, "silu"),
    "swish_default": (_swish_default, "silu"),
    "quick_gelu": (_quick_gelu, "silu"),
    "gelu": (_gelu_op, "gelu"),
    "gelu_default": (_gelu_op_default, "gelu"),
    "gelu_tanh": (_gelu_tanh_op, "gelu_tanh"),
    "gelu_erf_decomposed": (_gelu_erf, "gelu"),
    "gelu_tanh_decomposed": (_gelu_tanh, "gelu_tanh"),
}


TRANSPOSED_SUFFIX = "__onnxfuse_T"


class GatedMLPFusion(pattern.RewriteRuleClassBase):
    """``MatMul(act(MatMul(x, Wg) [+ Bg]) * (MatMul(x, Wu) [+ Bu]), Wd) [+ Bd]`` → one node.

    Weights may be initializers, Constant outputs or ``Transpose(perm=[1, 0])`` of either;
    the fused node reads the same values, so no weight is copied.

    With ``gemm``, the three projections are ``Gemm(x, W, [B], transB=1)`` (exporters emit
    these for 2-D inputs). The op wants [K, N] weights, so the rewrite stores each weight
    transposed once, and the function body reads it back through a Transpose (see
    ``_pass._untranspose_function``), so the weights are still stored once.
    """

    def __init__(self, form: str, *, biased: bool, gemm: bool = False) -> None:
        self.form = form
        self.biased = biased
        self.gemm = gemm
        self._act, self.activation = ACTIVATION_FORMS[form]
        flags = (",bias" if biased else "") + (",gemm" if gemm else "")
        super().__init__(f"FusedGatedMLP[{form}{flags}]", as_function=True)

    def pattern(self, op: Any, x: Any, w_gate: Any, w_up: Any, w_down: Any, b_gate: Any,
                b_up: Any, b_down: Any) -> Any:
        if self.gemm:
            def proj(v: Any, w: Any, b: Any) -> Any:
                return op.Gemm(v, w, b, transB=1) if self.biased else op.Gemm(v, w, transB=1)
            product = op.Mul(self._act(op, proj(x, w_gate, b_gate)), proj(x, w_up, b_up))
            return proj(product, w_down, b_down)
        gate = op.MatMul(x, w_gate)
        up = op.MatMul(x, w_up)
        if self.biased:
            gate, up = op.Add(gate, b_gate), op.Add(up, b_up)
        down = op.MatMul(op.Mul(self._act(op, gate), up), w_down)
        return op.Add(down, b_down) if self.biased else down

    def check(self, context: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
              b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
              b_down: ir.Value | None = None, **_: Any) -> Any:
        result = pattern.MatchResult()
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
        reason = _safety.check_candidate(
            x, w_gate, w_up, w_down, (b_gate, b_up, b_down) if self.biased else None,
            gemm=self.gemm,
        )
        return result.fail(reason.text, reason.sources[0] if reason.sources else None) if reason else result

    def rewrite(self, op: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
                b_down: ir.Value | None = None, **_: Any) -> Any:
        inputs = [x, w_gate, w_up, w_down]
        if self.gemm:
            inputs[1:] = [_transposed(op, w) for w in inputs[1:]]
        if self.biased:
            inputs += [b_gate, b_up, b_down]
        return op.FusedGatedMLP(*inputs, activation=self.activation, _domain=ops.DOMAIN,
                                _version=ops.OPSET_VERSION)


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
        if existing.meta.get(_TRANSPOSED_FROM) is w:
            return existing
        name = f"{base}_{i}"  # a model's own initializer of that name: not ours
    final = name

    def transpose() -> ir.TensorProtocol:
        data = np.ascontiguousarray(tensor.numpy().T)
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # its mapped pages would stay resident
        return ir.tensor(data, dtype=tensor.dtype, name=final)

    lazy = ir.LazyTensor(transpose, dtype=tensor.dtype, shape=ir.Shape(tuple(reversed(tensor.shape))),
                         name=name)
    value: ir.Value = op.initializer(lazy, name=name)
    value.meta[_TRANSPOSED_FROM] = w
    return value


_TRANSPOSED_FROM = "onnxfuse.transposed_from"


RULE_TAG = "pkg.onnxscript.rewriter.rule_name"


def _product_of(node: ir.Node) -> ir.Node | None:
    """The ``Mul`` whose product ``node`` projects down, if ``node`` can end a gated MLP
    (``MatMul(Mul(..), W)``, or a bias ``Add`` after one)."""
    if node.domain not in ("", "ai.onnx"):
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


class _Dispatch:
    """One entry of a rule set that tries, at each node that can end a gated MLP, only the
    commuted rules of the activation form found there.

    onnxscript tries every rule at every node: with 1,422 commuted variants that took 17 s
    on the 30-layer SmolLM2 export. A cheap structural test (is this a projection of a
    product?) and the key op of the activation pick the candidates; the rules themselves
    still decide every match.
    """

    remove_nodes = True
    as_function = True
    name = ""  # the matching rule's own name is recorded on the new node instead
    graph_pre_visitor = None
    graph_post_visitor = None

    def __init__(self, rules: list[Any]) -> None:
        self.by_key_op: dict[tuple[str, str], list[Any]] = {}
        for rule in rules:
            form, *flags = rule.name[len("FusedGatedMLP["):-1].split(",")
            root = "Gemm" if "gemm" in flags else "Add" if "bias" in flags else "MatMul"
            self.by_key_op.setdefault((root, _KEY_OPS[form]), []).append(rule)

    def try_rewrite(self, model: ir.Model, graph: Any, node: ir.Node, **kwargs: Any) -> Any:
        product = _product_of(node)
        if product is None:
            return None
        interior, _ = _scan.backward_slice(product.outputs[0])
        for key_op in dict.fromkeys(n.op_type for n in interior):
            for rule in self.by_key_op.get((node.op_type, key_op), ()):
                delta = rule.try_rewrite(model, graph, node, **kwargs)
                if delta is not None:
                    for new in delta.new_nodes:
                        new.metadata_props[RULE_TAG] = rule.name
                    return delta
        return None


def all_rules() -> pattern.RewriteRuleSet:
    """Every form, biased and not, with every operand order (commuted)."""
    rules = [GatedMLPFusion.rule(form, biased=b, gemm=g)
             for form in ACTIVATION_FORMS for b in (False, True) for g in (False, True)]
    commuted = list(pattern.RewriteRuleSet(rules, commute=True))
    return pattern.RewriteRuleSet([_Dispatch(commuted)])  # type: ignore[list-item]
