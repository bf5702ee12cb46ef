"""Score command-line inputs (images and volumes) and write what ``medad predict`` / ``fewshot score`` produce.

Into the run folder: ``scores.csv`` / ``scores.json`` (one row per image and per scored volume slice,
``path#slice<i>``; the JSON also records the threshold rule and the skipped files), for volumes
``volume_scores.csv`` (the volume's score is the highest score of its body-content slices) and
``anomaly_maps/<name>_anomaly.nii.gz`` (the slice maps resized back to each slice, zero on slices without
body content, with the input's origin, spacing and direction), and heat-map figures: one per image, and
one of each volume's most anomalous slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medad import console
from medad.cli.inputs import Inputs, VolumeInput
from medad.data.io import array_to_tensor, read_image
from medad.engine.evaluate import predict_batches
from medad.engine.run_folder import (ANOMALY_MAPS_DIR, SCORES_CSV, SCORES_JSON, VOLUME_SCORES_CSV, RunFolder)
from medad.engine.thresholds import Threshold, check_scores
from medad.io_utils import atomic_path
from medad.visualize import write_heatmaps

Predict = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class VolumeResult:
    volume: VolumeInput
    scores: np.ndarray  # one per body-content slice
    maps: np.ndarray  # len(indices)×S×S

    @property
    def score(self) -> float:
        return float(self.scores.max())

    @property
    def top_slice(self) -> int:
        return self.volume.indices[int(np.argmax(self.scores))]


@dataclass
class Scored:
    """Scores and maps of every input: images first, then each volume's slices."""

    inputs: Inputs
    maps: np.ndarray
    scores: np.ndarray

    @property
    def image_scores(self) -> np.ndarray:
        return self.scores[:len(self.inputs.images)]

    def volumes(self) -> Iterator[VolumeResult]:
        start = len(self.inputs.images)
        for volume in self.inputs.volumes:
            end = start + len(volume.indices)
            yield VolumeResult(volume, self.scores[start:end], self.maps[start:end])
            start = end

    def unit_scores(self) -> np.ndarray:
        """One score per image and per volume (what a threshold decides on)."""
        return np.concatenate([self.image_scores, [v.score for v in self.volumes()]])


def score_inputs(inputs: Inputs, predict: Predict, source: str, batch_size: int = 16) -> Scored:
    """Maps and scores of every input; a NaN or infinite score is an error naming the input and ``source``
    (the checkpoint)."""
    images = inputs.tensor()
    maps, scores = predict_batches(lambda rows: predict(images[rows]), len(images), batch_size)
    names = [str(image.path) for image in inputs.images] + [
        volume.slice_name(index) for volume in inputs.volumes for index in volume.indices]
    check_scores(scores, names, f"checkpoint {source}")
    return Scored(inputs, maps, scores)


def _anomaly_volume(result: VolumeResult) -> np.ndarray:
    """The slice maps resized back onto the volume's grid, zero on slices that were not scored."""
    volume = result.volume.volume
    out = np.zeros(volume.shape, dtype=np.float32)
    maps = torch.from_numpy(np.ascontiguousarray(result.maps, dtype=np.float32))[:, None]
    resized = F.interpolate(maps, size=volume.shape[1:], mode="bilinear", align_corners=False)[:, 0].numpy()
    out[result.volume.indices] = resized
    return out


def _write_anomaly_volume(path: Path, result: VolumeResult) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(_anomaly_volume(result))
    geometry = result.volume.geometry
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    with atomic_path(path, suffix=".nii.gz") as tmp:  # SimpleITK picks the format by the suffix
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_predictions(run: RunFolder, scored: Scored, threshold: Threshold, heatmaps: Path | None,
                      record: dict[str, Any]) -> None:
    """Every output of the module doc; ``record`` (command, options, versions, checkpoint) goes into the JSON."""
    rows = []
    for image, score in zip(scored.inputs.images, scored.image_scores, strict=True):
        rows.append({"path": str(image.path), "score": float(score), "abnormal": threshold.is_abnormal(score)})
    volume_rows = []
    for result in scored.volumes():
        for index, score in zip(result.volume.indices, result.scores, strict=True):
            rows.append({"path": result.volume.slice_name(index), "score": float(score),
                         "abnormal": threshold.is_abnormal(score)})
        map_name = f"{ANOMALY_MAPS_DIR}/{_stem(result.volume.name)}_anomaly.nii.gz"
        _write_anomaly_volume(run.file(map_name), result)
        volume_rows.append({"path": str(result.volume.source), "slices": len(result.volume.volume),
                            "scored_slices": len(result.volume.indices), "score": result.score,
                            "most_anomalous_slice": result.top_slice, "anomaly_map": map_name,
                            "abnormal": threshold.is_abnormal(result.score)})
    columns = ["path", "score"] + (["abnormal"] if threshold.value is not None else [])
    run.write_csv(SCORES_CSV, columns, ([row[c] for c in columns] for row in rows))
    if volume_rows:
        volume_columns = list(volume_rows[0]) if threshold.value is not None else list(volume_rows[0])[:-1]
        run.write_csv(VOLUME_SCORES_CSV, volume_columns, ([row[c] for c in volume_columns] for row in volume_rows))
    run.write_json(SCORES_JSON, {**record, "threshold": threshold.value, "threshold_rule": threshold.record(),
                                 "images": rows, "volumes": volume_rows,
                                 "skipped": [{"path": p, "reason": r} for p, r in scored.inputs.skipped]})
    run.write_skipped(scored.inputs.skipped)
    if heatmaps is not None:
        _write_heatmap_figures(heatmaps, scored, threshold)


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _write_heatmap_figures(out_dir: Path, scored: Scored, threshold: Threshold) -> None:
    images = scored.inputs.images
    volumes = list(scored.volumes())
    names = [str(i.path) for i in images] + [f"{_stem(v.volume.name)}_slice{v.top_slice}" for v in volumes]
    titles = [str(i.path) for i in images] + [
        f"{v.volume.source} · slice {v.top_slice} (the most anomalous of {len(v.volume.indices)}; volume score)"
        for v in volumes]
    originals = [lambda i=i: read_image(i.path) for i in images] + [
        lambda v=v: array_to_tensor(v.volume.volume[v.top_slice]) for v in volumes]
    maps = np.concatenate([scored.maps[:len(images)]] + [v.maps[None, np.argmax(v.scores)] for v in volumes])
    scores = np.concatenate([scored.image_scores, [v.score for v in volumes]])
    write_heatmaps(out_dir, names, (load() for load in originals), maps, scores, titles=titles, threshold=threshold)


def print_predictions(scored: Scored, threshold: Threshold) -> None:
    """One line per image and per volume (silent under --quiet), then the threshold and its rule."""
    for image, score in zip(scored.inputs.images, scored.image_scores, strict=True):
        console.info(f"{score:.5f}  {threshold.verdict(score) or '-':<40}  {image.path}")
    for result in scored.volumes():
        console.info(f"{result.score:.5f}  {threshold.verdict(result.score) or '-':<40}  {result.volume.source} "
                     f"(highest of {len(result.volume.indices)} body-content slices, at slice {result.top_slice})")
    if threshold.value is not None:
        console.info(f"threshold {threshold.value:.5f}: {threshold.description}")
    if threshold.warning:
        console.warn(threshold.warning)
    if scored.inputs.skipped:
        console.warn(f"{len(scored.inputs.skipped)} input file(s) skipped (listed in skipped_files.csv)")
