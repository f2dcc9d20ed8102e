"""ONNX Runtime sessions for the pipeline, and the inputs a model is run on."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx

from onnxfuse import models, ops
from onnxfuse.errors import InvalidModelError, UnsupportedError, UserError, first_line
from onnxfuse.modelfile import read_model
from onnxfuse.numerics import DType
from onnxfuse.pipeline.configs import BACKENDS, DEVICES

__all__ = ["BACKENDS", "Implementation", "ModelInfo", "implementation", "make_inputs", "model_info",
           "plugin_options", "run", "session"]

_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (read without loading its weights)."""

    path: Path
    inputs: tuple[tuple[str, int, tuple[int | str, ...]], ...]  # name, elem type, dims
    outputs: tuple[str, ...]
    metadata: dict[str, str]
    fused_nodes: tuple[str, ...]  # names of the fused-op nodes (ops.is_fused) of the main graph
    fused_outputs: tuple[str, ...]  # their output value names
    nested_fused: int = 0  # fused-op nodes inside subgraphs (If / Loop / Scan bodies)
    weights_dtype: str | None = None  # the float type of the fused nodes' weights, if any

    @property
    def dtype(self) -> str:
        """The model's compute type, which parity's ceiling follows: the exporter's record,
        else its fused nodes' weights' (a genai fp16 model keeps float32 logits), else float32."""
        return self.metadata.get("onnxfuse.dtype") or self.weights_dtype or "float32"

    @property
    def source(self) -> str | None:
        return self.metadata.get("onnxfuse.model")


def model_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a model's header: inputs, outputs, onnxfuse metadata, fused nodes.

    Raises:
        UserError: the file does not exist; InvalidModelError: it is not an ONNX model.
    """
    p = Path(path)
    header = read_model(p)
    inputs = tuple(
        (v.name, v.type.tensor_type.elem_type,
         tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim))
        for v in header.graph.input)
    fused = [n for n in header.graph.node if ops.is_fused(n)]
    types = {t.name: t.data_type for t in header.graph.initializer}
    floats = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
              onnx.TensorProto.BFLOAT16: "bfloat16"}
    weights = [floats[types[w]] for n in fused for w in n.input[1:2] if types.get(w) in floats]
    return ModelInfo(p, inputs, tuple(o.name for o in header.graph.output),
                     {m.key: m.value for m in header.metadata_props},
                     tuple(n.name for n in fused), tuple(n.output[0] for n in fused),
                     sum(_fused_in(g) for n in header.graph.node for g in _subgraphs(n)),
                     weights[0] if weights else None)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def _fused_in(graph: onnx.GraphProto) -> int:
    """Fused-op nodes in ``graph`` and its subgraphs, at any depth."""
    return sum(ops.is_fused(n) + sum(_fused_in(g) for g in _subgraphs(n)) for n in graph.node)


def session(path: str | os.PathLike[str], *, device: str = "cpu", optimize: bool = False,
            extra_outputs: Sequence[str] = (), options: Any = None) -> Any:
    """An ORT session on ``device`` with graph optimizations off (unless ``optimize``),
    asserting it really got the provider (ORT falls back to CPU silently).

    ``extra_outputs`` are intermediate values exposed as graph outputs (for localisation).
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda":
        _preload_cuda_libraries()
    so = options or ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 4  # fatal only: ORT's errors come back as exceptions, in one line
    model = read_model(path)  # checked before ORT opens anything
    source: Any = os.fspath(path)
    if extra_outputs:
        known = {o.name for o in model.graph.output}
        for name in extra_outputs:
            if name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        # External data paths resolve against this folder: keep the model beside its data.
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    os.fspath(Path(path).parent))
        source = model.SerializeToString()
    try:
        sess = ort.InferenceSession(source, so, providers=_PROVIDERS[device])
    except Exception as e:
        raise InvalidModelError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from None
    if _PROVIDERS[device][0] not in sess.get_providers():
        raise UserError(f"ONNX Runtime has no {_PROVIDERS[device][0]} here (got {sess.get_providers()}): "
                        "install onnxruntime-gpu or use --device cpu")
    return sess


@functools.cache
def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN from the ``nvidia-*`` wheels (or torch's), as
    its ``preload_dlls`` does; without it ORT drops the CUDA provider silently when those
    libraries are not on the loader's path. Best effort: the provider check below reports."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:  # it prints its warnings: keep them off our stdout
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            preload()


@dataclasses.dataclass(frozen=True)
class Implementation:
    """What runs a fused graph's nodes in a session, and the plugin's counter that proves it.

    Attributes:
        name: for reports: ``plugin cpu matmul`` (or ``naive``: the library's native CPU
            kernels), ``triton (interpreter)`` / ``triton (compiled)`` (the bridge's Triton
            kernel), or ``function body`` (ORT's own kernels through the node's model-local
            function, i.e. the original nodes).
        kernel: the library's kernel (``matmul``, ``naive``, ``triton``); ``None``: none.
    """

    name: str
    kernel: str | None

    @property
    def counter(self) -> str | None:
        """What :meth:`runs` reads; ``None`` for the function body, which nothing counts."""
        if self.kernel is None:
            return None
        return "bridge.calls()" if self.kernel == "triton" else f"onnxfuse_kernel_runs({self.kernel})"

    def runs(self) -> int:
        """The counter's process-wide total now (take differences around runs): the library's
        runs of a native kernel, or the Triton launches the bridge completed; 0 for the
        function body."""
        if self.kernel is None:
            return 0
        from onnxfuse.kernels.ort import bridge

        return bridge.calls() if self.kernel == "triton" else bridge.kernel_runs(self.kernel)


def implementation(backend: str, device: str = "cpu", cpu_kernel: str = "off") -> Implementation:
    """What runs the fused nodes of a session made with :func:`plugin_options` of the same
    arguments.

    Raises:
        UserError: an unknown backend, device or CPU kernel.
    """
    _check(backend, device)
    if backend == "none":
        return Implementation("function body", None)
    from onnxfuse.kernels import interpreting
    from onnxfuse.kernels import ort as plugin

    kernel = plugin.selected_kernel(backend=backend, device=device, cpu_kernel=cpu_kernel)
    if kernel is None:
        return Implementation("function body", None)
    if kernel == "triton":
        return Implementation(f"triton ({'interpreter' if interpreting() else 'compiled'})", kernel)
    return Implementation(f"plugin {device} {kernel}", kernel)


def _check(backend: str, device: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")


def plugin_options(backend: str, device: str = "cpu", cpu_kernel: str = "off") -> Callable[[], Any] | None:
    """A factory of session options that run a fused graph's nodes on ``backend``: ``None``
    for ``none`` (plain ORT: the nodes' function bodies), else the plugin registered with that
    backend and, for the default backend on CPU, ``cpu_kernel``
    (:func:`onnxfuse.kernels.ort.session_options`; its default ``off`` leaves CPU nodes to
    their function bodies). :func:`implementation` says what runs.

    Raises:
        UserError: an unknown backend; UnsupportedError: the plugin is not built.
    """
    _check(backend, device)
    if backend == "none":
        return None
    from onnxfuse.kernels import ort as plugin

    plugin.library_path()  # a clear error now if the plugin is not built
    return functools.partial(plugin.session_options, backend=backend, device=device, cpu_kernel=cpu_kernel)


def run(sess: Any, feeds: dict[str, np.ndarray], path: str | os.PathLike[str]) -> list[Any]:
    """``sess.run(None, feeds)``; a model that loads but that ONNX Runtime cannot run on
    these inputs (a shape that cannot be, an allocation it refuses, inputs another model's
    feeds do not match) is the model's fault.

    Raises:
        InvalidModelError: ONNX Runtime failed; the message has its first line.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    try:
        return sess.run(None, feeds)
    except (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException,
            ort_state.NotImplemented, ValueError) as e:  # ValueError: feeds that do not match
        first = first_line(e)
        raise InvalidModelError(f"ONNX Runtime cannot run {path}: {first[:300]}") from None


def make_inputs(info: ModelInfo, batch: int, seq: int, seed: int = 0, past: int = 0) -> tuple[dict[str, np.ndarray], Any]:
    """Inputs for ``info``'s model and, when the model records its source, the torch module
    that produced it (else ``None``): the exporter's own seeded inputs, or random ones.
    ``past``: for a decoder with a KV cache (:func:`is_decoder`), ``seq`` new positions after
    a cache of ``past`` (its own, computed by the source model where known)."""
    if info.source is not None:
        ex = _build(info.source, info.metadata.get("onnxfuse.part", "full"),
                    info.metadata.get("onnxfuse.dtype", "float32"),
                    int(info.metadata.get("onnxfuse.seed", "0")),
                    int(info.metadata.get("onnxfuse.mlp_layer", "0")),
                    info.metadata.get("onnxfuse.with_past") == "true")
        tensors = ex.make_inputs(batch, seq, past) if past else ex.make_inputs(batch, seq)
        return {n: _to_numpy(t) for n, t in zip(ex.input_names, tensors, strict=True)}, (ex, tensors)
    rng = np.random.default_rng(seed)
    if is_decoder(info):
        return decoder_inputs(info, batch, seq, past=past, seed=seed), None
    feeds = {}
    for name, elem, dims in info.inputs:
        if elem in (0, onnx.TensorProto.STRING):  # 0: a sequence, map or optional input
            raise UnsupportedError(f"input {name!r} of {info.path} is not a numeric tensor: "
                                   "parity and bench feed numeric tensors only")
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else seq if i == 1 else 1)
                 for i, d in enumerate(dims)]
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(np_dtype, np.integer):
            feeds[name] = rng.integers(0, 100, size=shape).astype(np_dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np_dtype)
    return feeds, None


# The decoder I/O names that onnxruntime-genai and optimum use (and `export --with-past`).
PAST_KEY, PAST_VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{}.key", "present.{}.value"


def is_decoder(info: ModelInfo) -> bool:
    """Whether ``info``'s model is a decoder with a KV cache under genai's and optimum's names."""
    names = {name for name, _, _ in info.inputs}
    return "input_ids" in names and PAST_KEY.format(0) in names


def num_layers(info: ModelInfo) -> int:
    """The number of cache layers of a decoder (:func:`is_decoder`)."""
    names = {name for name, _, _ in info.inputs}
    n = 0
    while PAST_KEY.format(n) in names:
        n += 1
    return n


def decoder_inputs(info: ModelInfo, batch: int, seq: int, *, past: int, seed: int = 0,
                   vocab: int = 100) -> dict[str, np.ndarray]:
    """Feeds of a decoder (:func:`is_decoder`) for ``seq`` new tokens after ``past`` cached
    ones: random ids below ``vocab``, a mask of ones over ``past + seq``, positions from
    ``past``, and a random cache (kv heads and head size: the model's static dims)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    head_size = _genai_head_size(info.path)
    for name, elem, dims in info.inputs:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if name == "input_ids":
            feeds[name] = rng.integers(0, vocab, size=(batch, seq)).astype(np_dtype)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, past + seq), np_dtype)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(past, past + seq), (batch, seq)).astype(np_dtype)
        elif name.startswith("past_key_values."):
            size = dims[3] if len(dims) == 4 and isinstance(dims[3], int) and dims[3] > 0 else head_size
            if len(dims) != 4 or not isinstance(dims[1], int) or dims[1] < 1 or size is None:
                raise UnsupportedError(f"cache input {name!r} of {info.path} has dims {list(dims)}: expected "
                                       "[batch, kv_heads, past, head_size] with static heads and size (or a "
                                       "genai_config.json beside the model that gives head_size)")
            feeds[name] = (rng.standard_normal((batch, dims[1], past, size)) * 0.5).astype(np_dtype)
        else:
            raise UnsupportedError(f"decoder input {name!r} of {info.path} is none of input_ids, attention_mask, "
                                   "position_ids, past_key_values.*: onnxfuse cannot make it up")
    return feeds


def _genai_head_size(model: Path) -> int | None:
    """``model.decoder.head_size`` of the genai config beside ``model``, if any (genai's
    builder leaves the cache's head size symbolic in the graph)."""
    from onnxfuse.pipeline import genai

    if not (model.parent / genai.CONFIG_NAME).exists():
        return None
    size = genai.read_config(model.parent)["model"]["decoder"].get("head_size")
    return size if isinstance(size, int) and size > 0 else None


@functools.lru_cache(maxsize=2)
def _build(model: str, part: str, dtype: str, seed: int, mlp_layer: int, with_past: bool) -> models.Exportable:
    # Cached: parity and bench ask for two shapes of the same model, and loading a real
    # checkpoint takes seconds (SmolLM2: 17 s).
    # part and dtype are the model's metadata strings, unchecked: build refuses any value but
    # its own with a UserError that names it.
    return models.build(model, part=cast(models.Part, part), dtype=cast(DType, dtype), seed=seed,
                        mlp_layer=mlp_layer, with_past=with_past)


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy()
