"""Self-contained scoring graphs for deployment: a batch of images → (anomaly maps, image scores).

The graph holds everything eager scoring does after decoding: the frozen teacher with its own ImageNet
normalisation, the trained student(s), the distance maps, the bilinear upsampling, the per-image Gaussian
smoothing and the image score.

* Input ``images``: float32 ``B×3×S×S`` in [0, 1], as medad's data layer produces them (intensities
  normalised to [0, 1], grey replicated to 3 channels, resized to the checkpoint's ``image_size`` S).
  The batch size B is dynamic; S is fixed.
* Outputs ``anomaly_map`` (``B×S×S``) and ``score`` (``B``).
* Few-shot models (``d24fad_nn``, ``d24fad``, and PatchCore-K: ``patchcore``): with support images the
  supports' features are computed once and baked into the graph as constants; without them, the tensors of
  the model's support bank (``model.prepare_supports(images).to_tensors()``: ``patches``, ``stats``,
  ``student<i>`` …) are further inputs, named as in that dict, their first dimension (K rows, or K·h·w
  patches) dynamic.  An ONNX graph keeps the ones its scoring reads (D²4FAD-NN's default: ``patches`` and
  ``stats``); :func:`run_onnx` feeds them.
* ONNX graphs use opset :data:`ONNX_OPSET` (torch's TorchScript-based exporter); TorchScript graphs are
  traced.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medad.io_utils import atomic_path
from medad.models.base import OneClassModel
from medad.scoring import anomaly_maps, image_scores

#: ONNX operator set of exported graphs (onnxruntime ≥ 1.12 runs it)
ONNX_OPSET = 17
FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
OUTPUT_NAMES = ["anomaly_map", "score"]


class OneClassGraph(nn.Module):
    """RD4AD / PDD scoring: teacher → student(s) → anomaly maps and image scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.model.config
        maps = anomaly_maps(self.model.distance_maps(self.model.teacher(images)), images.shape[-2:], config.sigma)
        return maps, image_scores(maps, config.score_reduce)


class FewShotGraph(nn.Module):
    """Few-shot scoring against a support bank: baked in as buffers, or given as inputs named ``names``."""

    def __init__(self, model: nn.Module, baked: dict[str, torch.Tensor] | None, names: list[str], k: int) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.k = k
        for name, tensor in (baked or {}).items():
            self.register_buffer(f"support_{name}", tensor)

    def forward(self, images: torch.Tensor, *supports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (dict(zip(self.names, supports, strict=False)) if supports else
                   {name: getattr(self, f"support_{name}") for name in self.names})
        bank = self.model.supports_from_tensors({**tensors, "k": torch.tensor(self.k)})
        maps, scores, _ = self.model.score_encoded(self.model.encode_queries(images), bank)
        return maps, scores


@dataclass
class ScoringGraph:
    """A graph module with an example input and its inputs' names and dynamic dimensions."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def scoring_graph(model: nn.Module, image_size: int, support_images: torch.Tensor | None = None,
                  example_batch: int = 2) -> ScoringGraph:
    """The scoring graph of a trained model (on the CPU, in eval mode); see the module doc for its inputs.

    ``support_images`` (K×3×S×S, few-shot models only) are baked in; without them a few-shot graph takes
    the support bank's tensors as inputs (traced with K = 2 random supports, any K works).
    """
    model = model.cpu().eval()
    images = torch.rand(example_batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    dynamic = {"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}}
    if isinstance(model, OneClassModel):
        if support_images is not None:
            raise ValueError(f"a {model.method} model takes no support images: it was trained on its task")
        return ScoringGraph(OneClassGraph(model).eval(), (images,), ["images"], dynamic)
    baked = support_images is not None
    if not baked:
        support_images = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    tensors = {name: tensor.cpu() for name, tensor in model.prepare_supports(support_images).to_tensors().items()
               if name != "k"}
    names = sorted(tensors)
    graph = FewShotGraph(model, tensors if baked else None, names, len(support_images)).eval()
    if baked:
        return ScoringGraph(graph, (images,), ["images"], dynamic)
    dynamic.update({name: {0: "support_rows"} for name in names if name != "stats"})
    return ScoringGraph(graph, (images, *(tensors[name] for name in names)), ["images", *names], dynamic)


@dataclass
class ExportResult:
    path: Path
    format: str
    input_names: list[str]
    opset: int | None


@contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence what tracing says about this graph and torch's notes on its own exporters.

    The tracer warns where the models compare shapes in Python (the teacher's stride check, PDD's resize
    shortcut): with the image size fixed in the graph those comparisons are constants, so the warnings do
    not apply.  torch also marks the TorchScript-based exporter and ``torch.jit`` as deprecated; both are
    what this module documents and tests.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*")
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1.*")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated.*")
        yield


def export_graph(graph: ScoringGraph, out: str | Path, fmt: str) -> ExportResult:
    """Write the graph as ONNX (opset :data:`ONNX_OPSET`) or TorchScript to ``out``, atomically.

    The graph modules are in eval mode, which matters: the exporter leaves the module in the mode it found
    it, and a module created in training mode would switch the model's BatchNorm layers to training.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    with torch.no_grad(), _quiet_tracer(), atomic_path(out, suffix=SUFFIXES[fmt]) as tmp:
        if fmt == "onnx":
            torch.onnx.export(graph.module, graph.example, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=graph.input_names, output_names=OUTPUT_NAMES,
                              dynamic_axes=graph.dynamic_axes, do_constant_folding=True)
        else:
            traced = torch.jit.trace(graph.module, graph.example, check_trace=False)
            torch.jit.save(traced, str(tmp))
    return ExportResult(out, fmt, graph.input_names, ONNX_OPSET if fmt == "onnx" else None)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of an exported graph (``threads``: intra-op threads, default onnxruntime's)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor, supports: dict[str, torch.Tensor] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps, scores) of an onnxruntime session; ``supports`` (a support bank's ``to_tensors()``)
    feeds the support inputs of a graph without baked supports (those its graph uses)."""
    feeds = {"images": images.detach().cpu().numpy()}
    for item in session.get_inputs()[1:]:
        if supports is None or item.name not in supports:
            raise ValueError(f"this graph takes the support tensor {item.name!r} as an input; pass the supports' "
                             "features (model.prepare_supports(images).to_tensors())")
        feeds[item.name] = supports[item.name].detach().cpu().numpy()
    maps, scores = session.run(OUTPUT_NAMES, feeds)
    return maps, scores


def run_exported(result: ExportResult, images: torch.Tensor, supports: dict[str, torch.Tensor] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps, scores) of an exported file: onnxruntime for ONNX, ``torch.jit.load`` for TorchScript."""
    if result.format == "onnx":
        return run_onnx(onnx_session(result.path), images, supports)
    with _quiet_tracer():
        module = torch.jit.load(str(result.path), map_location="cpu")
    extra = [supports[name] for name in result.input_names[1:]] if len(result.input_names) > 1 else []
    with torch.no_grad():
        maps, scores = module(images, *extra)
    return maps.numpy(), scores.numpy()


def verify_export(graph: ScoringGraph, result: ExportResult, batch: int = 3) -> dict[str, float]:
    """Largest absolute differences between the exported file's and eager scoring's maps and scores on
    ``batch`` random images (another batch size than the traced one, so the dynamic batch is checked too)."""
    size = graph.example[0].shape[-1]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    supports = graph.example[1:]
    with torch.no_grad():
        maps, scores = graph.module(images, *supports)
    got_maps, got_scores = run_exported(result, images, dict(zip(graph.input_names[1:], supports, strict=False)) or None)
    return {"max_abs_score_difference": float(np.abs(got_scores - scores.numpy()).max()),
            "max_abs_map_difference": float(np.abs(got_maps - maps.numpy()).max())}
