"""Property tests of the rewriter on generated host graphs (hypothesis).

Each example is a *recipe*, pure data that hypothesis draws and shrinks: an input width ``d``,
leading dims, an opset, and a chain of steps over a pool of live values. A step is either a
planted gated MLP (a form that must fuse, or a deliberate near miss) or an ordinary op (Add,
Relu, Tanh, Sigmoid, a lone silu ``Mul(a, Sigmoid(a))``, a Sigmoid gate without projections,
Transpose, Reshape, Concat, an extra MatMul, a Dropout with its mask unused, a dead node).
Every other value no step consumes is a graph output. For every recipe:

- the pass fuses exactly the planted MLPs that must fuse, and reports every planted near miss;
- every graph output has the same numbers (ONNX Runtime CPU, optimizations off; the fused
  model runs through its function bodies): bit for bit where no fused node is upstream,
  relative L2 <= 1e-6 otherwise (in practice also bit for bit, see ``stats["exact"]``);
- every node outside a match is unchanged (same NodeProto bytes, same order), and so is every
  initializer such a node reads;
- fusing the fused model fuses nothing more and gives the same bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxfuse.graph_rewrites import fuse_model
from onnxfuse.numerics import compare
from tests.graph_rewrites.graphs import EVALUATED_FORMS, Builder, activation
from tests.helpers import ort_run

# Hypothesis does not run a recipe it has already run, so ask for a margin over the 200 the
# test proves ran. ONNXFUSE_PROPERTY_EXAMPLES asks for more; ONNXFUSE_PROPERTY_SEED draws
# other graphs (unset: derandomized, every run draws the same ones).
EXAMPLES, MIN_EXAMPLES = int(os.environ.get("ONNXFUSE_PROPERTY_EXAMPLES", "230")), 200
SEED = os.environ.get("ONNXFUSE_PROPERTY_SEED")

# form (tests/graph_rewrites/graphs.py) -> lowest opset with its ops (Gelu 20, Swish 24),
# and the fused node's activation.
FUSING_FORMS = {"silu": (18, "silu"), "silu_rev": (18, "silu"), "quick_gelu": (18, "silu"),
                "gelu_erf_dec": (18, "gelu"), "gelu_tanh_dec": (18, "gelu_tanh"),
                "gelu": (20, "gelu"), "gelu_none": (20, "gelu"), "gelu_tanh": (20, "gelu_tanh"),
                "swish": (24, "silu"), "swish_default": (24, "silu"),
                "gelu_tanh_ts": (18, "gelu_tanh"), "gelu_tanh_ts_rev": (18, "gelu_tanh"),
                "gelu_tanh_ts_identity": (18, "gelu_tanh"), "silu_exp": (18, "silu")}
MISS_FORMS = {"tanh": 18, "sigmoid_only": 18, "relu": 18, "quick_gelu_1702": 18, "none": 18,
              "swish_alpha2": 24}
# Near misses: a non-fusing activation; an interior value with another consumer or that is a
# graph output; W_up a graph input; gate and up reading different values; Gemm with alpha 0.5.
MISSES = ("form", "consumer", "output", "weights_input", "two_inputs", "gemm_alpha")
INTERIOR = ("gate", "up", "act", "prod")
OPS = ("add", "relu", "tanh", "sigmoid", "silu", "silu_rev", "sigmoid_gate", "scale", "matmul",
       "transpose", "reshape", "concat", "dead", "dropout")
# Weights: initializers; Constant nodes; Transpose of a [N, K] initializer (MatMul only);
# the initializers of an earlier MLP of the same shape (tied); an initializer also listed as
# a graph input, which a caller may override.
WEIGHTS = ("init", "constant", "tied", "overridable", "transpose")


@dataclasses.dataclass(frozen=True)
class Mlp:
    form: str
    product_order: str  # "act_first" | "up_first"
    biased: bool
    gemm: bool  # 2-D input (reshaped to it if needed) and Gemm(transB=1) projections
    weights: str
    d_ff: int
    miss: str | None
    where: str  # the interior value a "consumer" or "output" near miss exposes
    source: int  # index into the pool of live values

    @property
    def fuses(self) -> bool:
        # An overridable weight cannot be baked into the transposed copy a Gemm fusion
        # stores; the MatMul forms read the graph input itself, so they still fuse. The
        # forms only the evaluated fusion recognises fuse with MatMul projections only.
        return self.miss is None and not (self.gemm and (self.weights == "overridable"
                                                         or self.form in EVALUATED_FORMS))


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class Recipe:
    opset: int
    d: int
    lead: tuple[int, ...]
    symbolic: bool  # leading dims of the input as dim_params
    infer: bool  # run ONNX shape inference on the host (value_info on every value)
    steps: tuple[Mlp | Op, ...]


@st.composite
def _mlps(draw: st.DrawFn) -> Mlp:
    miss = draw(st.one_of(st.none(), st.none(), st.sampled_from(MISSES)))  # 2/3 must fuse
    gemm = True if miss == "gemm_alpha" else draw(st.booleans())
    form = draw(st.sampled_from(list(MISS_FORMS if miss == "form" else FUSING_FORMS)))
    weights = draw(st.sampled_from(WEIGHTS[:-1] if gemm else WEIGHTS))
    return Mlp(form, draw(st.sampled_from(("act_first", "up_first"))), draw(st.booleans()), gemm,
               weights, draw(st.integers(1, 16)), miss, draw(st.sampled_from(INTERIOR)),
               draw(st.integers(0, 15)))


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    ops = st.builds(Op, st.sampled_from(OPS), st.integers(0, 15), st.integers(0, 15))
    steps = draw(st.lists(st.one_of(_mlps(), ops), min_size=1, max_size=8))
    # Every opset that has the ops of the forms drawn (so every form is as likely).
    opsets = {**{f: o for f, (o, _) in FUSING_FORMS.items()}, **MISS_FORMS}
    need = max([opsets[s.form] for s in steps if isinstance(s, Mlp)], default=18)
    opset = draw(st.sampled_from([o for o in (18, 20, 24) if o >= need]))
    return Recipe(opset, draw(st.integers(1, 16)), draw(st.sampled_from(((2, 3), (4,), (1, 5), (3, 2)))),
                  draw(st.booleans()), draw(st.booleans()), tuple(steps))


@dataclasses.dataclass
class Host:
    """A built recipe: the model and what the rewrite must do to it."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    cores: list[set[str]]  # node names of each MLP that must fuse
    vanish: set[str]  # weight nodes only a fused Gemm MLP read (its weights are re-stored)
    misses: list[str]  # down-projection node names of the planted near misses
    downs: list[str]  # output value of each fusing MLP
    activations: list[str]  # the activation each fusing MLP's fused node must have


class _HostBuilder:
    def __init__(self, recipe: Recipe) -> None:
        self.r = recipe
        self.b = Builder(seed=len(recipe.steps))
        shape = (*recipe.lead, recipe.d)
        self.live: list[tuple[str, tuple[int, ...]]] = [("x", shape)]
        self.consumed: set[str] = set()
        self.inputs = [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT,
            [*(f"n{i}" for i in range(len(recipe.lead))), recipe.d] if recipe.symbolic else list(shape))]
        self.feeds = {"x": np.random.default_rng(7).standard_normal(shape).astype(np.float32)}
        self.extra_outputs: list[tuple[str, tuple[int, ...]]] = []
        self.tied: dict[tuple[bool, int, int], list[str]] = {}
        self.host = Host(onnx.ModelProto(), self.feeds, [], set(), [], [], [])

    # ------------------------------------------------------------------ pool of values
    def pick(self, i: int) -> tuple[str, tuple[int, ...]]:
        name, shape = self.live[i % len(self.live)]
        self.consumed.add(name)
        return name, shape

    def partner(self, i: int, name: str, shape: tuple[int, ...]) -> str:
        """Another live value of ``shape`` (``name`` itself when there is none)."""
        same = [n for n, s in self.live if s == shape and n != name] or [name]
        self.consumed.add(same[i % len(same)])
        return same[i % len(same)]

    def add(self, name: str, shape: tuple[int, ...]) -> None:
        self.live.append((name, shape))

    def shape_const(self, dims: tuple[int, ...]) -> str:
        name = self.b.name("shape")
        self.b.inits.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))
        return name

    # ------------------------------------------------------------------ steps
    def op(self, step: Op) -> None:
        b = self.b
        a, shape = self.pick(step.a)
        if step.kind == "add":
            self.add(b.op("Add", [a, self.partner(step.b, a, shape)]), shape)
        elif step.kind in ("relu", "tanh", "sigmoid"):
            self.add(b.op(step.kind.capitalize(), [a]), shape)
        elif step.kind == "silu":
            self.add(b.op("Mul", [a, b.op("Sigmoid", [a])]), shape)
        elif step.kind == "silu_rev":
            self.add(b.op("Mul", [b.op("Sigmoid", [a]), a]), shape)
        elif step.kind == "sigmoid_gate":
            self.add(b.op("Mul", [b.op("Sigmoid", [a]), self.partner(step.b, a, shape)]), shape)
        elif step.kind == "scale":
            self.add(b.op("Mul", [a, b.scalar(0.5)]), shape)
        elif step.kind == "matmul":
            self.add(b.op("MatMul", [a, b.weight((shape[-1], shape[-1]))]), shape)
        elif step.kind == "transpose":
            perm = [1, 0, 2] if len(shape) == 3 else [1, 0]
            self.add(b.op("Transpose", [a], perm=perm), tuple(shape[p] for p in perm))
        elif step.kind == "reshape":
            new = (math.prod(shape[:-1]), shape[-1]) if len(shape) == 3 else (1, *shape)
            target = (-1, shape[-1]) if len(shape) == 3 else (1, -1, shape[-1])
            self.add(b.op("Reshape", [a, self.shape_const(target)]), new)
        elif step.kind == "dead":  # dead code: nobody reads it, it is no graph output
            b.op("Relu", [a])
        elif step.kind == "dropout":  # an unused optional output (the mask)
            out, mask = b.name("dropout"), b.name("mask")
            b.nodes.append(helper.make_node("Dropout", [a], [out, mask], name=b.name("n_Dropout")))
            self.add(out, shape)
        elif step.kind == "concat":
            other = self.partner(step.b, a, shape)
            self.add(b.op("Concat", [a, other], axis=0), (2 * shape[0], *shape[1:]))
        else:
            raise ValueError(step.kind)

    def weights(self, m: Mlp, d: int) -> tuple[list[str], set[str]]:
        """W_gate, W_up, W_down (in the layout the projections read) and the nodes that
        produce them."""
        b = self.b
        shapes = [(m.d_ff, d), (m.d_ff, d), (d, m.d_ff)] if m.gemm else [(d, m.d_ff), (d, m.d_ff), (m.d_ff, d)]
        key = (m.gemm, d, m.d_ff)
        if m.weights == "tied" and key in self.tied and m.miss != "weights_input":
            return self.tied[key], set()
        names, nodes = [], set()
        for i, shape in enumerate(shapes):
            if i == 1 and m.miss == "weights_input":
                names.append(b.name("w_in"))
                self.inputs.append(helper.make_tensor_value_info(names[1], TensorProto.FLOAT, list(shape)))
                self.feeds[names[1]] = (np.random.default_rng(13).standard_normal(shape) * 0.3).astype(np.float32)
            elif m.weights == "constant":
                names.append(b.weight(shape, as_constant=True))
                nodes.add(b.nodes[-1].name)
            elif m.weights == "transpose":
                names.append(b.op("Transpose", [b.weight(shape[::-1])], perm=[1, 0]))
            else:
                names.append(b.weight(shape))
        if m.weights == "tied" and m.miss != "weights_input":
            self.tied[key] = names
        if m.weights == "overridable":
            self.inputs.append(helper.make_tensor_value_info(names[0], TensorProto.FLOAT, list(shapes[0])))
            self.feeds[names[0]] = (np.random.default_rng(11).standard_normal(shapes[0]) * 0.3).astype(np.float32)
        return names, nodes

    def mlp(self, m: Mlp) -> None:
        b = self.b
        x, shape = self.pick(m.source)
        d, outer, inner = shape[-1], x, shape
        if m.gemm and len(shape) != 2:
            x = b.op("Reshape", [x, self.shape_const((-1, d))])
            inner = (math.prod(shape[:-1]), d)
        w, weight_nodes = self.weights(m, d)
        bias = [b.weight((n,)) for n in (m.d_ff, m.d_ff, d)] if m.biased else [None] * 3
        up_x = x
        if m.miss == "two_inputs":
            up_x = b.op("Neg", [x])
        start = len(b.nodes)

        projections: list[str] = []  # node names of the gate, up and down projections

        def proj(v: str, i: int) -> str:
            if m.gemm:
                alpha = 0.5 if m.miss == "gemm_alpha" else 1.0
                out = b.op("Gemm", [v, w[i], *([bias[i]] if m.biased else [])], transB=1, alpha=alpha)
            else:
                out = b.op("MatMul", [v, w[i]])
            projections.append(b.nodes[-1].name)
            return b.op("Add", [out, bias[i]]) if m.biased and not m.gemm else out

        gate, up = proj(x, 0), proj(up_x, 1)
        act = activation(b, gate, m.form)
        prod = b.op("Mul", [act, up] if m.product_order == "act_first" else [up, act])
        down = proj(prod, 2)
        # Constant nodes of an activation's scalars are copied into the function body (the
        # fused node replaces the others) and then go as unused.
        core = {n.name for n in b.nodes[start:] if n.op_type != "Constant"}
        scalars = {n.name for n in b.nodes[start:] if n.op_type == "Constant"}
        interior = dict(gate=gate, up=up, act=act, prod=prod)
        if m.miss == "consumer":
            self.add(b.op("Neg", [interior[m.where]]), (*inner[:-1], m.d_ff))
        elif m.miss == "output":
            self.extra_outputs.append((interior[m.where], (*inner[:-1], m.d_ff)))
        if m.fuses:
            self.host.cores.append(core)
            self.host.downs.append(down)
            self.host.activations.append(FUSING_FORMS[m.form][1])
            self.host.vanish |= scalars
            if m.gemm:
                self.host.vanish |= weight_nodes
        else:
            self.host.misses.append(projections[2])
        y = down
        if m.gemm and len(shape) != 2:
            y = b.op("Reshape", [down, b.op("Shape", [outer])])
        self.add(y, shape)

    def build(self) -> Host:
        for step in self.r.steps:
            self.mlp(step) if isinstance(step, Mlp) else self.op(step)
        leaves = [(n, s) for n, s in self.live if n not in self.consumed and n != "x"]
        if not leaves and not self.extra_outputs:  # only dead code: the graph needs an output
            leaves = [(self.b.op("Identity", ["x"]), self.live[0][1])]
        # Declared ranks with unknown dims: shape inference fills in what it knows.
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * len(s))
                   for n, s in [*leaves, *self.extra_outputs]]
        graph = helper.make_graph(self.b.nodes, "host", self.inputs, outputs, self.b.inits)
        opsets = [helper.make_opsetid("", self.r.opset), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
        self.host.model = onnx.shape_inference.infer_shapes(model) if self.r.infer else model
        return self.host


# ---------------------------------------------------------------------------- checks

def _downstream(graph: onnx.GraphProto, sources: list[str]) -> set[str]:
    """Every value computed from any of ``sources`` (the graph is topologically sorted)."""
    reached = set(sources)
    for node in graph.node:
        if reached.intersection(node.input):
            reached.update(node.output)
    return reached


stats: collections.Counter[str] = collections.Counter()


def check(recipe: Recipe) -> None:
    host = _HostBuilder(recipe).build()
    onnx.checker.check_model(host.model, full_check=True)
    before = ir.to_proto(ir.from_proto(host.model))  # the baseline: onnx_ir's own round trip
    model = ir.from_proto(host.model)
    fused_nodes, skipped = fuse_model(model)
    fused = ir.to_proto(model)

    # 1. Exactly the planted MLPs fuse; every planted near miss is reported.
    assert len(fused_nodes) == len(host.cores), (fused_nodes, skipped)
    assert sum(n.op_type == "FusedGatedMLP" for n in fused.graph.node) == len(host.cores)
    assert set(host.misses) <= {s.down for s in skipped}, (host.misses, skipped)
    assert all(set(n.replaced) in host.cores for n in fused_nodes)
    assert [n.activation for n in fused_nodes] == [
        host.activations[host.cores.index(set(n.replaced))] for n in fused_nodes]
    onnx.checker.check_model(fused, full_check=True)

    # 2. Nodes outside the matches, and the initializers they read, are unchanged.
    gone = set().union(*host.cores) | host.vanish
    kept = [n.SerializeToString() for n in before.graph.node if n.name not in gone]
    assert kept == [n.SerializeToString() for n in fused.graph.node if n.op_type != "FusedGatedMLP"]
    inits = {t.name: t.SerializeToString() for t in fused.graph.initializer}
    read = {i for n in before.graph.node if n.name not in gone for i in n.input}
    for t in before.graph.initializer:
        if t.name in read:
            assert inits.get(t.name) == t.SerializeToString(), t.name

    # 3. The numbers of every output.
    affected = _downstream(before.graph, host.downs)
    for out, actual, expected in zip(before.graph.output, ort_run(fused, host.feeds),
                                     ort_run(host.model, host.feeds), strict=True):
        if out.name not in affected:
            assert np.array_equal(actual, expected, equal_nan=True), out.name
            continue
        c = compare(out.name, actual, expected, limit=1e-6)
        assert c.passed, c.detail
        stats["outputs after a fused node"] += 1
        stats["exact"] += bool(np.array_equal(actual, expected, equal_nan=True))

    # 4. Idempotence.
    again = ir.from_proto(fused)
    more, skipped_again = fuse_model(again)
    assert more == [] and skipped_again == skipped
    assert ir.to_proto(again).SerializeToString() == fused.SerializeToString()

    stats["examples"] += 1
    stats["planted"] += len(host.cores)
    stats["near misses"] += len(host.misses)
    stats[f"hosts with {len(host.cores) if len(host.cores) < 3 else '3+'} planted"] += 1
    for step in recipe.steps:
        if isinstance(step, Mlp) and step.fuses:
            stats[f"form {step.form}"] += 1
        elif isinstance(step, Mlp):
            unfused = "Gemm with an evaluated form" if step.form in EVALUATED_FORMS else "overridable Gemm weight"
            stats[f"miss {step.miss or unfused}"] += 1


def test_rewriter_properties_on_generated_hosts() -> None:
    stats.clear()
    start = time.perf_counter()

    @settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(recipes())
    def run(recipe: Recipe) -> None:
        check(recipe)

    (seed(int(SEED))(run) if SEED is not None else run)()
    seconds = time.perf_counter() - start
    print(f"\n{stats['examples']} host graphs in {seconds:.1f} s: {dict(sorted(stats.items()))}")
    assert stats["examples"] >= MIN_EXAMPLES
    # The generator covers what it claims: every fusing form fused, every near-miss kind
    # planted, hosts with none and with several MLPs.
    for form in FUSING_FORMS:
        assert stats[f"form {form}"] > 0, form
    for miss in MISSES:
        assert stats[f"miss {miss}"] > 0, miss
    assert stats["hosts with 0 planted"] > 0 and stats["hosts with 3+ planted"] > 0
