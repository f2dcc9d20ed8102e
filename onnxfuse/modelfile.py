"""Reading a model file that may be hostile: every loader calls :func:`read_model` before
ONNX, ONNX Runtime or onnx_ir touches the file.

It parses the protobuf without external data, then checks what those libraries would
trust: the IR version and opset imports, every tensor (graph and subgraph initializers,
sparse initializers, node attributes, function bodies, training graphs), the model-local
function call graph, the declared inputs, then ``onnx.checker``. Ops that ONNX has no schema
for but ONNX Runtime has (its contrib ops, such as ``SimplifiedLayerNormalization`` that
onnxruntime-genai's builder writes in the default domain, or anything in ``com.microsoft``)
are no reason to refuse a model that ORT runs: their nodes are checked for structure only,
and :func:`read_model_notes` says which were. External data is accepted
only where ``onnx_ir`` and ONNX Runtime both resolve it against the model's folder
(initializers of the main graph and of its subgraphs), and only as a plain relative path
to a regular, singly linked file inside that folder, with its range inside the file.

ONNX loading has a long CVE history (external-data traversal fixed and bypassed several
times), and ORT and onnx_ir each have their own loader: rather than trusting any of them,
nothing reaches them until this check has passed. See docs/security.md.
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import Message
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from onnxfuse.errors import InvalidModelError, ModelNotFoundError, first_line

__all__ = ["MAX_INPUT_ELEMENTS", "MAX_MODEL_BYTES", "read_model", "read_model_notes"]

# Protobuf cannot parse a message of 2 GiB or more: refuse such a file before reading it.
MAX_MODEL_BYTES = 2**31 - 1
# onnxfuse feeds every graph input (parity, bench); a static input shape above this many
# elements (1 GiB of float32) is refused rather than allocated.
MAX_INPUT_ELEMENTS = 2**28
_MAX_LOCATION = 1024
# ONNX Runtime refuses any other key (measured, 1.32: "model format error"); onnx also
# knows ``basepath``, which ORT refuses too.
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
# ONNX Runtime reads a location of this form as a raw process memory address.
_ORT_MEMORY_MARKER = "_ORT_MEM_ADDR_"
_DIGITS = re.compile(r"[0-9]{1,19}")
_KNOWN_DTYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_SUB_BYTE_BITS: dict[int, int] = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                  TensorProto.INT2: 2, TensorProto.UINT2: 2,
                  TensorProto.FLOAT6E2M3: 6, TensorProto.FLOAT6E3M2: 6}
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Attributes of standard ops that name an element type (Cast, EyeLike, RandomNormal, ...).
_DTYPE_ATTRIBUTES = frozenset({"to", "dtype", "output_dtype"})
# The newest opset onnx knows per standard domain (its version table's last row).
_LATEST_OPSETS = dict(zip(("", "ai.onnx.ml", "ai.onnx.training"),
                          onnx.helper.VERSION_TABLE[-1][2:5], strict=True))


def _show(text: str, limit: int = 80) -> str:
    """A name from the file, quoted and escaped so an error stays one printable line."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


class _Checker:
    """Checks one parsed model; ``fail`` raises the error that names the file."""

    def __init__(self, path: Path, model: ModelProto) -> None:
        self.path = path
        self.folder = Path(os.path.realpath(path.parent))
        self.model = model
        self.sizes: dict[str, int] = {}  # data file -> size, each checked once
        self.notes: list[str] = []  # checks skipped, and why

    def fail(self, what: str, fix: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path}: {what}: {fix}")

    # -- tensors -----------------------------------------------------------------------

    def tensor(self, t: TensorProto, where: str, *, external_ok: bool) -> None:
        name = f"tensor {_show(t.name)} ({where})"
        if t.data_type not in _KNOWN_DTYPES:
            raise self.fail(f"{name} has unknown data type {t.data_type}",
                            "re-export the model with onnx >= 1.21")
        count = 1
        for d in t.dims:
            if d < 0:
                raise self.fail(f"{name} has a negative dimension {d}", "fix its dims")
            count *= d
            if count > 2**62:
                raise self.fail(f"{name} declares more than 2**62 elements (dims "
                                f"{list(t.dims)[:8]})", "fix its dims")
        expected = self.nbytes(t.data_type, count)
        # (protobuf parses an unknown data_location as DEFAULT, as ORT's parser does)
        external = t.data_location == TensorProto.EXTERNAL
        if not external and len(t.external_data):
            raise self.fail(f"{name} has external_data entries but data_location is not "
                            "EXTERNAL", "remove the entries or re-export the model")
        if not external:
            if t.HasField("raw_data") and expected is not None and len(t.raw_data) != expected:
                raise self.fail(f"{name} holds {len(t.raw_data)} bytes of raw data for "
                                f"{expected} declared by its dims and type", "re-export the model")
            return
        if not external_ok:
            raise self.fail(f"{name} uses external data, which onnxfuse accepts only for "
                            "graph initializers", "store this tensor inline (onnx.load, "
                            "then onnx.save without save_as_external_data)")
        if expected is None:
            raise self.fail(f"{name} is a string tensor with external data", "store it inline")
        self.external(t, name, expected)

    @staticmethod
    def nbytes(dtype: int, count: int) -> int | None:
        if dtype == TensorProto.STRING:
            return None
        bits = _SUB_BYTE_BITS.get(dtype)
        if bits is not None:
            return math.ceil(count * bits / 8)
        return count * onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize

    def external(self, t: TensorProto, name: str, expected: int) -> None:
        entries: dict[str, str] = {}
        for entry in t.external_data:
            if entry.key not in _EXTERNAL_KEYS:
                raise self.fail(f"{name} has external-data key {_show(entry.key)}", "only "
                                f"{', '.join(sorted(_EXTERNAL_KEYS))} are allowed; remove it")
            if entry.key in entries:
                raise self.fail(f"{name} has two external-data {entry.key!r} entries",
                                "keep one")
            entries[entry.key] = entry.value
        location = entries.get("location", "")
        data = self.data_file(location, name)
        size = self.sizes.get(data)
        if size is None:
            size = self.sizes[data] = self.regular_file(data, location, name)
        numbers = {}
        for key in ("offset", "length"):
            if key in entries:
                if not _DIGITS.fullmatch(entries[key]):
                    raise self.fail(f"{name} has external-data {key} {_show(entries[key])}",
                                    "it must be a non-negative decimal integer")
                numbers[key] = int(entries[key])
        offset = numbers.get("offset", 0)
        length = numbers.get("length", expected)
        if length != expected:
            raise self.fail(f"{name} has external-data length {length} but its dims and type "
                            f"need {expected} bytes", "re-export the model")
        if offset + length > size:
            raise self.fail(f"{name} reads bytes {offset}..{offset + length} of "
                            f"{_show(location)}, which has {size} bytes",
                            "the data file is truncated or belongs to another model")

    def data_file(self, location: str, name: str) -> str:
        """The data file a location names, refused unless it is a plain relative path."""
        shown = _show(location)
        if not location:
            raise self.fail(f"{name} has external data without a location", "re-export the model")
        if len(location) > _MAX_LOCATION or "\0" in location:
            raise self.fail(f"{name} has external-data location {shown}",
                            "name a file in the model's folder")
        if _ORT_MEMORY_MARKER in location:
            raise self.fail(f"{name} has external-data location {shown}, which ONNX Runtime "
                            "reads as a memory address", "name a file in the model's folder")
        parts = location.split("/")
        if location.startswith("/") or "\\" in location or ":" in location:
            raise self.fail(f"{name} has external-data location {shown}, not a plain relative "
                            "path", "name a file in the model's folder, e.g. 'model.onnx.data'")
        if any(p in ("", ".", "..") for p in parts):
            raise self.fail(f"{name} has external-data location {shown}, which steps out of "
                            "or around the model's folder", "name a file in the model's folder")
        return os.path.join(self.folder, *parts)

    def regular_file(self, data: str, location: str, name: str) -> int:
        """Size of ``data``, refused unless each component below the model's folder is a
        real folder (no symlink) and the file is a regular file with one link."""
        current = str(self.folder)
        for part in location.split("/"):
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except OSError as e:
                raise self.fail(f"{name} needs {_show(location)} beside the model, which "
                                f"cannot be read ({e.strerror})",
                                "copy the model's data file next to it") from None
            if stat.S_ISLNK(st.st_mode):
                raise self.fail(f"{name} reads {_show(location)} through a symlink",
                                "replace the link with the file itself (cp --dereference)")
        if not stat.S_ISREG(st.st_mode):
            raise self.fail(f"{name} reads {_show(location)}, which is not a regular file",
                            "name the model's data file")
        # A hard link looks like any file in the folder but may be another name for a file
        # anywhere on the same file system (an unpacked archive can plant one): refuse.
        if st.st_nlink > 1:
            raise self.fail(f"{name} reads {_show(location)}, which has {st.st_nlink} hard "
                            "links", "replace it with a copy (cp FILE FILE.tmp && mv FILE.tmp "
                            "FILE)")
        return st.st_size

    # -- graphs, functions, the model ----------------------------------------------------

    def attributes(self, node: NodeProto, where: str, main: bool) -> None:
        here = f"{where}, node {_show(node.name or node.op_type)}"
        if node.domain in _DEFAULT_DOMAINS:
            # What onnx.checker leaves to the runtime (measured, onnx 1.23): a Constant
            # without exactly one value, an element type attribute naming no type.
            if node.op_type == "Constant" and len(node.attribute) != 1:
                raise self.fail(f"{here} is a Constant with {len(node.attribute)} value "
                                "attributes", "give it exactly one")
            for a in node.attribute:
                if (a.name in _DTYPE_ATTRIBUTES and a.type == AttributeProto.INT
                        and not a.ref_attr_name and a.i not in _KNOWN_DTYPES):
                    raise self.fail(f"{here} attribute {a.name!r} names unknown element type "
                                    f"{a.i}", "re-export the model")
        for a in node.attribute:
            at = f"{here} attribute {_show(a.name)}"
            if a.HasField("t"):
                self.tensor(a.t, at, external_ok=False)
            for t in a.tensors:
                self.tensor(t, at, external_ok=False)
            for s in [*([a.sparse_tensor] if a.HasField("sparse_tensor") else []), *a.sparse_tensors]:
                self.tensor(s.values, at, external_ok=False)
                self.tensor(s.indices, at, external_ok=False)
            for g in _subgraphs(a):
                self.graph(g, f"{at} subgraph", main=main)

    def graph(self, g: GraphProto, where: str, *, main: bool) -> None:
        """Check a graph; ``main``: the main graph or one of its subgraphs, the only graphs
        whose external initializers onnx_ir resolves against the model's folder (it leaves
        those of function bodies and training graphs relative to the working directory)."""
        here = f"{where} {_show(g.name)}" if g.name else where
        for t in g.initializer:
            self.tensor(t, f"initializer of {here}", external_ok=main)
        for s in g.sparse_initializer:
            self.tensor(s.values, f"sparse initializer of {here}", external_ok=False)
            self.tensor(s.indices, f"sparse initializer of {here}", external_ok=False)
        for node in g.node:
            self.attributes(node, here, main)

    def functions(self) -> None:
        keys: dict[tuple[str, str, str], onnx.FunctionProto] = {}
        for f in self.model.functions:
            if f.domain in _DEFAULT_DOMAINS:  # onnx_ir writes it back with no domain at all
                raise self.fail(f"function {_show(f.name)} is in the ONNX domain {f.domain!r}, "
                                "which is for standard operators", "give it a domain of its own")
            key = (f.domain, f.name, f.overload)
            if key in keys:
                raise self.fail(f"function {_show(f.domain + '::' + f.name)} is defined twice",
                                "keep one definition")
            keys[key] = f
            produced = {*f.input, *(o for n in f.node for o in n.output)}
            missing = [o for o in f.output if o not in produced]
            if missing:
                raise self.fail(f"function {_show(f.domain + '::' + f.name)} never computes its "
                                f"output {_show(missing[0])}", "fix the function body")
            for node in f.node:
                self.attributes(node, f"function {_show(f.domain + '::' + f.name)}", False)
        for node in _all_nodes([*self.model.graph.node, *(n for f in keys.values() for n in f.node)]):
            callee = keys.get((node.domain, node.op_type, node.overload))
            if callee is not None and (len(node.input) > len(callee.input)
                                       or len(node.output) > len(callee.output)):
                raise self.fail(f"node {_show(node.name or node.op_type)} calls function "
                                f"{_show(callee.domain + '::' + callee.name)} with "
                                f"{len(node.input)} inputs and {len(node.output)} outputs; it "
                                f"declares {len(callee.input)} and {len(callee.output)}",
                                "fix the call")
        # ORT and onnx_ir inline model-local functions: a call cycle never ends.
        calls = {key: {c for c in _calls(list(f.node)) if c in keys} for key, f in keys.items()}
        state: dict[tuple[str, str, str], int] = {}

        def visit(key: tuple[str, str, str]) -> None:
            state[key] = 1
            for callee in calls[key]:
                if state.get(callee) == 1:
                    raise self.fail(f"function {_show(callee[0] + '::' + callee[1])} calls "
                                    "itself (directly or through other functions)",
                                    "model-local functions must not recurse")
                if callee not in state:
                    visit(callee)
            state[key] = 2

        for key in keys:
            if key not in state:
                visit(key)

    def opsets(self) -> None:
        m = self.model
        if not 1 <= m.ir_version <= onnx.IR_VERSION:
            raise self.fail(f"IR version {m.ir_version} is not one onnx {onnx.__version__} "
                            f"knows (1..{onnx.IR_VERSION})", "re-export the model")
        seen: set[str] = set()
        for o in m.opset_import:
            domain = "" if o.domain in _DEFAULT_DOMAINS else o.domain
            if domain in seen:
                raise self.fail(f"opset of domain {_show(o.domain)} is imported twice",
                                "keep one import")
            seen.add(domain)
            latest = _LATEST_OPSETS.get(domain, 2**31 - 1)
            if not 1 <= o.version <= latest:
                raise self.fail(f"opset {o.version} of domain {_show(o.domain)} is out of "
                                f"range (1..{latest})", "re-export the model")
        if "" not in seen:
            raise self.fail("the model imports no ONNX opset", "re-export the model")

    def io(self) -> None:
        g = self.model.graph
        if not g.output:
            raise self.fail("the graph has no outputs", "re-export the model")
        for v in (*g.input, *g.output, *g.value_info):
            if not v.type.HasField("tensor_type"):
                continue
            tt = v.type.tensor_type
            if tt.elem_type not in _KNOWN_DTYPES:
                raise self.fail(f"value {_show(v.name)} has unknown element type {tt.elem_type}",
                                "re-export the model")
            if any(d.HasField("dim_value") and d.dim_value < 0 for d in tt.shape.dim):
                raise self.fail(f"value {_show(v.name)} has a negative dimension",
                                "fix its shape")
        # An output or value_info naming an input counts too: onnx_ir takes its shape for the
        # input's (found by tests/fuzz: a rewrite then wrote a model this check refuses).
        names = {v.name for v in g.input}
        for v in (*g.input, *(v for v in (*g.output, *g.value_info) if v.name in names)):
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")]
            if math.prod(dims) > MAX_INPUT_ELEMENTS:
                raise self.fail(f"input {_show(v.name)} declares {math.prod(dims)} elements "
                                f"(dims {dims[:8]})", f"onnxfuse feeds inputs of at most "
                                f"{MAX_INPUT_ELEMENTS} elements; make the large axes symbolic")

    def strings(self, message: Message, where: str) -> None:
        """Every string field is UTF-8: protobuf hands the others over as bytes, which
        onnx_ir fails on only when it writes the model (found by tests/fuzz)."""
        for field in message.DESCRIPTOR.fields:
            if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
                continue  # never touch raw_data: it may be gigabytes
            repeated = (field.is_repeated if hasattr(field, "is_repeated")
                        else field.label == field.LABEL_REPEATED)
            if not repeated and field.type == field.TYPE_MESSAGE and not message.HasField(field.name):
                continue
            value = getattr(message, field.name)
            for item in value if repeated else [value]:
                if isinstance(item, bytes):
                    raise self.fail(f"a string in {where}.{field.name} is not UTF-8",
                                    "fix or re-export the model")
                if field.type == field.TYPE_MESSAGE:
                    self.strings(item, f"{where}.{field.name}")

    def without_onnx_schemas(self, m: ModelProto) -> ModelProto:
        """``m``, or a copy in which the nodes of default-domain ops that ONNX has no schema
        for but ONNX Runtime has are moved to a domain the checker does not know (it then
        checks their structure, not their attributes). Notes what was skipped: those ops and
        the ops of other domains (which the checker never had schemas for)."""
        calls = [*_calls(list(m.graph.node)), *(c for f in m.functions for c in _calls(list(f.node)))]
        local = {(f.domain, f.name, f.overload) for f in m.functions}
        counts: dict[tuple[str, str], int] = {}
        for domain, op, overload in calls:
            if (domain, op, overload) not in local:
                key = ("" if domain in _DEFAULT_DOMAINS else domain, op)
                counts[key] = counts.get(key, 0) + 1
        unknown = {op for (domain, op) in counts if domain == "" and not onnx.defs.has(op)}
        foreign = [key for key in counts if key[0] != "" and key[0] not in _LATEST_OPSETS]
        ort_ops = _ort_schemas() if unknown or foreign else frozenset()
        relabel = {op for op in unknown if ("", op) in ort_ops}
        for (domain, op) in sorted(foreign + [("", op) for op in relabel]):
            n = counts[(domain, op)]
            shown = op if domain == "" else f"{domain}::{op}"
            whose = "ONNX Runtime's own op" if (domain, op) in ort_ops else "an op ONNX Runtime does not define"
            self.notes.append(f"onnx.checker has no schema for {shown} ({n} node{'s' * (n > 1)}; "
                              f"{whose}): its nodes were checked for structure only")
        if not relabel:
            return m
        copy = ModelProto()
        copy.CopyFrom(m)
        domain = "onnxfuse.ort_schema"
        for graph_nodes in (list(copy.graph.node), *(list(f.node) for f in copy.functions)):
            for node in _all_nodes(graph_nodes):
                if node.domain in _DEFAULT_DOMAINS and node.op_type in relabel:
                    node.domain = domain
        copy.opset_import.add(domain=domain, version=1)
        for f in copy.functions:
            f.opset_import.add(domain=domain, version=1)
        return copy

    def run(self) -> None:
        m = self.model
        if not m.HasField("graph"):
            raise self.fail("the file holds no graph", "is it an ONNX model?")
        self.strings(m, "model")
        self.opsets()
        self.functions()
        self.graph(m.graph, "main graph", main=True)
        for i, training in enumerate(m.training_info):
            for part in ("initialization", "algorithm"):
                self.graph(getattr(training, part), f"training_info[{i}].{part}", main=False)
        self.io()
        checked = m
        if any(t.data_location == TensorProto.EXTERNAL for t in _initializers(m.graph)):
            # Given a proto, onnx.checker resolves external data against the working
            # directory: check a copy whose (already validated) external tensors are empty.
            # The non-full checker does not infer shapes, so their dims do not matter.
            checked = ModelProto()
            checked.CopyFrom(m)
            for t in _initializers(checked.graph):
                if t.data_location == TensorProto.EXTERNAL:
                    t.data_location = TensorProto.DEFAULT
                    del t.external_data[:]
                    t.dims[:] = [0]
                    t.raw_data = b""
        checked = self.without_onnx_schemas(checked)
        try:
            onnx.checker.check_model(checked)
        except Exception as e:  # ValidationError, or whatever else the checker raises on it
            first = first_line(e)
            raise self.fail(f"onnx.checker: {first[:300]}", "fix or re-export the model") from None


def _subgraphs(a: AttributeProto) -> list[GraphProto]:
    return [*([a.g] if a.HasField("g") else []), *a.graphs]


def _all_nodes(nodes: list[NodeProto]) -> Iterator[NodeProto]:
    """``nodes`` and the nodes of their subgraphs at any depth."""
    for node in nodes:
        yield node
        for a in node.attribute:
            for g in _subgraphs(a):
                yield from _all_nodes(list(g.node))


def _calls(nodes: list[NodeProto]) -> Iterator[tuple[str, str, str]]:
    return ((n.domain, n.op_type, n.overload) for n in _all_nodes(nodes))


def _initializers(g: GraphProto) -> Iterator[TensorProto]:
    """Initializers of ``g`` and of its subgraphs at any depth."""
    yield from g.initializer
    for node in _all_nodes(list(g.node)):
        for a in node.attribute:
            for sub in _subgraphs(a):
                yield from sub.initializer


@functools.cache
def _ort_schemas() -> frozenset[tuple[str, str]]:
    """(domain, op) of every op ONNX Runtime has a schema for, its own included; the default
    domain as ``""``."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c
    except ImportError:  # no ORT: nothing it would run is known, the checker decides
        return frozenset()
    return frozenset(("" if s.domain in _DEFAULT_DOMAINS else s.domain, s.name)
                     for s in ort_c.get_all_operator_schema())


def read_model(path: str | os.PathLike[str]) -> ModelProto:
    """Parse and check the model at ``path`` without loading its external data.

    Returns the model proto (external tensors still point at their data files, all of them
    inside the model's folder).

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        InvalidModelError: it is not a regular file, not an ONNX model, or fails a check; the
            message names the file, the tensor or value at fault, and the fix.
    """
    return read_model_notes(path)[0]


def read_model_notes(path: str | os.PathLike[str]) -> tuple[ModelProto, list[str]]:
    """:func:`read_model`, plus the checks it skipped and why, one line each (for reports):
    the ops ``onnx.checker`` has no schema for that ONNX Runtime runs (its own ops)."""
    p = Path(path).expanduser().absolute()
    try:
        st = p.stat()
    except OSError:
        raise ModelNotFoundError(f"model {p} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError(f"model {p} is not a regular file: name an .onnx file")
    if st.st_size > MAX_MODEL_BYTES:
        raise InvalidModelError(f"model {p} is {st.st_size} bytes, over protobuf's 2 GiB limit: "
                                "store the weights as external data")
    try:
        with p.open("rb") as f:
            model = ModelProto.FromString(f.read(MAX_MODEL_BYTES + 1))
    except OSError as e:
        raise InvalidModelError(f"cannot read model {p}: {e.strerror}") from None
    except Exception as e:  # protobuf's DecodeError, and RecursionError for deep nesting
        raise InvalidModelError(f"{p} is not an ONNX model ({type(e).__name__}): "
                                "name an .onnx file") from None
    checker = _Checker(p, model)
    checker.run()
    return model, checker.notes
