"""Few-shot scorers: the bundled learned model, another checkpoint, or training-free PatchCore-K, and their
support features, prepared once per support set and cached.

The CLI (``fewshot score | evaluate``, ``serve``, ``export``, ``demo``) and the web app (:mod:`medad.serve`)
load scorers from here.  ``--method`` names one of :data:`FEWSHOT_METHODS`; :data:`DEFAULT_FEWSHOT_METHOD`
is the one every command uses unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medad.checkpoints import MODEL_FILE
from medad.engine.run_folder import DEMO_MODEL_DIR
from medad.errors import CheckpointError
from medad.io_utils import atomic_path

if TYPE_CHECKING:
    import torch

#: the learned model (medad's bundled D²4FAD-NN unless a checkpoint names another), PatchCore-K on its teacher, and
#: support scoring plus medad's bundled generic student adapted to the supports
FEWSHOT_METHODS = ("d24fad_nn", "patchcore", "adapted_student")
#: what every few-shot command scores with when ``--method`` is not given: by the rules of rounds 8 and 10
#: (docs/METHODS.md), the best scorer on the development pool with no task more than a point below PatchCore-K (the
#: bundled generic student adapted to the references, with the bundled D²4FAD-NN's teacher→student term at K ≤ 2)
DEFAULT_FEWSHOT_METHOD = "adapted_student"
#: what ``export`` writes when neither ``--method`` nor ``--checkpoint`` is given: the best exportable scorer by the
#: same rule (the adapted student fine-tunes on the references, so it has no fixed graph)
DEFAULT_EXPORT_METHOD = "patchcore"
#: PatchCore-K's input size: the bundled model's (and the few-shot benchmark's)
PATCHCORE_IMAGE_SIZE = 128


@dataclass
class ScoringModel:
    """A loaded few-shot scorer: the model, what a record needs to know about it, and the name commands print."""

    model: Any  # a FewShotModel or PatchCoreFewShot: prepare_supports, predict, encode_queries, score_encoded
    meta: dict[str, Any]  # method, teacher, image_size, train_tasks, …
    name: str
    #: the weights file; None for the training-free scorer
    checkpoint: Path | None
    #: what the support cache keys on (the weights' digest, or the training-free scorer's settings)
    identity: str

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def record(self) -> dict[str, Any]:
        """What result files say about the scorer."""
        return {**self.meta, "name": self.name, "checkpoint_file": str(self.checkpoint) if self.checkpoint else None}


def checkpoint_file(path: str | Path) -> Path:
    """The weights file of a ``--checkpoint``: the file itself, a run folder's ``model.safetensors`` or a
    ``medad demo --train`` folder's ``model/model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / MODEL_FILE, path / DEMO_MODEL_DIR / MODEL_FILE):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"checkpoint not found: {path} holds no {MODEL_FILE} (nor {DEMO_MODEL_DIR}/{MODEL_FILE}); "
                              "give a run folder, a demo folder or the .safetensors file itself")
    return path


def load_scorer(method: str | None = None, checkpoint: str | Path | None = None,
                teacher_weights: str | Path | None = "imagenet", device: str | torch.device = "cpu") -> ScoringModel:
    """The scorer a command asked for: ``checkpoint`` (any few-shot checkpoint), else ``method`` (default
    :data:`DEFAULT_FEWSHOT_METHOD`): the bundled learned model, PatchCore-K on its teacher, or support scoring with
    the bundled generic student adapted to the references."""
    method = method or (None if checkpoint else DEFAULT_FEWSHOT_METHOD)
    if method is not None and method not in FEWSHOT_METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; choose one of {', '.join(FEWSHOT_METHODS)}")
    if method == "patchcore":
        if checkpoint is not None:
            raise ValueError("--method patchcore is training-free and takes no --checkpoint; drop one of them")
        return _patchcore(teacher_weights, device)
    from medad.checkpoints import read_meta
    from medad.pretrained import GENERIC_METHOD

    if method == GENERIC_METHOD or (method is None and read_meta(checkpoint_file(checkpoint)).get("method")
                                    == GENERIC_METHOD):
        return _adapted_student(checkpoint, teacher_weights, device)
    from medad.models.factory import load_trained_model
    from medad.models.registry import methods
    from medad.pretrained import BUNDLED_NAME, bundled_checkpoint, file_sha256

    bundled = checkpoint is None
    file = bundled_checkpoint() if bundled else checkpoint_file(checkpoint)
    if bundled and not file.is_file():
        raise CheckpointError(f"the bundled model {file} is missing from this installation; reinstall medad or give "
                              "--checkpoint or --method patchcore")
    expected = (method,) if method else tuple(methods("few_shot"))
    model, meta = load_trained_model(file, teacher_weights, expected_method=expected, device=device)
    digest = file_sha256(file)
    tasks = ", ".join(meta.get("train_tasks", [])) or "unknown tasks"
    name = (f"{BUNDLED_NAME}, sha256 {digest[:12]}…, trained on {tasks}" if bundled
            else f"{meta['method']} checkpoint {file} (trained on {tasks})")
    return ScoringModel(model, meta, name, file, digest)


def _patchcore(teacher_weights: str | Path | None, device: str | torch.device) -> ScoringModel:
    from medad.backbones import DEFAULT_TEACHER, build_teacher
    from medad.device import resolve_device, to_device
    from medad.models.patchcore import PatchCoreFewShot

    model = to_device(PatchCoreFewShot(build_teacher(DEFAULT_TEACHER, weights=teacher_weights)).eval(),
                      resolve_device(device))
    meta = {**model.meta(), "image_size": PATCHCORE_IMAGE_SIZE, "train_tasks": []}
    name = f"PatchCore-K on {DEFAULT_TEACHER} (training-free, no checkpoint), {PATCHCORE_IMAGE_SIZE} px"
    identity = json.dumps({**meta, "teacher_weights": str(teacher_weights)}, sort_keys=True)
    return ScoringModel(model, meta, name, None, identity)


def _adapted_student(checkpoint: str | Path | None, teacher_weights: str | Path | None,
                     device: str | torch.device) -> ScoringModel:
    """Support scoring plus a generic student adapted to the supports: the bundled student unless ``checkpoint``."""
    from medad.backbones import build_teacher
    from medad.checkpoints import load_model
    from medad.device import resolve_device, to_device
    from medad.models.adapted_student import AdaptedStudentConfig, AdaptedStudentFewShot
    from medad.pretrained import GENERIC_METHOD, GENERIC_NAME, file_sha256, generic_student_checkpoint
    from medad.scoring import DEFAULT_SIGMA

    bundled = checkpoint is None
    file = generic_student_checkpoint() if bundled else checkpoint_file(checkpoint)
    if bundled and not file.is_file():
        raise CheckpointError(f"the bundled generic student {file} is missing from this installation; reinstall medad "
                              "or give --checkpoint or another --method")
    state, meta = load_model(file, GENERIC_METHOD)
    teacher = build_teacher(meta["teacher"], weights=teacher_weights)
    config = AdaptedStudentConfig.from_dict(meta["config"])
    tsd_model, tsd_meta, tsd_file = (_bundled_tsd_model(meta["teacher"], teacher_weights) if config.tsd_weight
                                     else (None, {}, {"sha256": ""}))
    model = AdaptedStudentFewShot(teacher, {key: value.float() for key, value in state.items()}, config,
                                  tsd_student=tsd_model.student if tsd_model else None,
                                  tsd_sigma=tsd_model.config.sigma if tsd_model else DEFAULT_SIGMA)
    model = to_device(model.eval(), resolve_device(device))
    digest = file_sha256(file)
    tasks = ", ".join(meta.get("train_tasks", [])) or "unknown tasks"
    name = (f"{GENERIC_NAME}, sha256 {digest[:12]}…, trained on {tasks}, adapted to the references" if bundled
            else f"{GENERIC_METHOD} checkpoint {file} (generic student trained on {tasks})")
    extra = {}
    if tsd_model is not None:
        name += (f"; teacher→student term at K ≤ {config.tsd_max_k} from the bundled D²4FAD-NN "
                 f"(sha256 {tsd_file['sha256'][:12]}…)")
        extra = {"tsd_model": {**tsd_file, "train_tasks": tsd_meta.get("train_tasks", [])}}
    return ScoringModel(model, {**model.meta(), "image_size": meta["image_size"], "train_tasks": meta["train_tasks"],
                                **extra}, name, file, digest + tsd_file["sha256"])


def _bundled_tsd_model(teacher: str, teacher_weights: str | Path | None
                       ) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The bundled D²4FAD-NN (whose teacher→student map the adapted student's config asks for), its metadata, and
    its file and digest (``{"file", "sha256"}``); its teacher must be the generic student's."""
    from medad.models.factory import load_trained_model
    from medad.pretrained import bundled_checkpoint, file_sha256

    file = bundled_checkpoint()
    if not file.is_file():
        raise CheckpointError(f"the bundled model {file}, whose teacher→student term the adapted student uses at small "
                              "K, is missing from this installation; reinstall medad or give another --method")
    model, meta = load_trained_model(file, teacher_weights, expected_method="d24fad_nn")
    if meta["teacher"] != teacher:
        raise CheckpointError(f"the bundled model's teacher {meta['teacher']} is not the generic student's {teacher}")
    return model, meta, {"file": str(file), "sha256": file_sha256(file)}


def _support_cache_file(cache_dir: Path, scorer: ScoringModel, images: torch.Tensor) -> Path:
    from medad.features import image_key

    digest = hashlib.sha1(scorer.identity.encode())
    for image in images:
        digest.update(image_key(image).encode())
    return cache_dir / f"{digest.hexdigest()}.safetensors"


def load_or_prepare_supports(scorer: ScoringModel, support_images: torch.Tensor, cache_dir: Path | None):
    """Support features from the cache when this scorer has seen these images, else computed (and stored when
    ``cache_dir`` is given).  The cache holds host tensors; they are loaded onto the model's device.  A damaged
    entry (truncated, edited, not the tensors this model needs) is dropped with a warning and computed again."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from medad import console
    from medad.device import module_device

    if cache_dir is None:
        return scorer.model.prepare_supports(support_images)
    path = _support_cache_file(cache_dir, scorer, support_images)
    if path.is_file():
        try:
            return scorer.model.supports_from_tensors(load_file(str(path), device=str(module_device(scorer.model))))
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
            console.warn(f"the support cache entry {path} is damaged ({' '.join(str(error).split())}); "
                         "it was dropped and the supports' features are computed again")
            path.unlink(missing_ok=True)
    supports = scorer.model.prepare_supports(support_images)
    with atomic_path(path) as tmp:
        save_file({name: tensor.cpu() for name, tensor in supports.to_tensors().items()}, str(tmp))
    return supports
