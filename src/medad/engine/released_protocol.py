"""An emulation of the evaluation in D²4FAD's released code, to show how much of a figure it explains.

The released ``test.py`` scores an unshuffled test loader whose images are sorted by class
(normals first, then each anomaly folder), in batches of 16 with ``drop_last=True``, and
smooths each batch's maps with ``gaussian_filter(maps, sigma=4)`` over the whole B×H×W
array: the filter runs along the batch axis too, so every image's map is averaged with its
neighbours in the batch, which share its label.  ``main.py`` keeps the epoch with the best
test AUROC.  None of this is how medad evaluates; it exists for the benchmark's
``"protocol": "released"`` rows.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from medad.metrics import image_metrics

RELEASED_BATCH = 16
RELEASED_SIGMA = 4.0


def released_protocol_scores(maps: np.ndarray, labels, reduce: str = "max", batch_size: int = RELEASED_BATCH,
                             sigma: float = RELEASED_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Image scores of N×H×W raw maps under the released protocol, and the indices of the images it kept."""
    labels = np.asarray(labels, dtype=int)
    if len(maps) != len(labels):
        raise ValueError(f"{len(maps)} maps for {len(labels)} labels")
    order = np.argsort(labels, kind="stable")  # class-sorted, as the folder-ordered loader is
    kept = len(order) // batch_size * batch_size  # drop_last
    if kept == 0:
        raise ValueError(f"fewer than {batch_size} test images: the released protocol scores none")
    scores = []
    for start in range(0, kept, batch_size):
        rows = order[start:start + batch_size]
        smoothed = gaussian_filter(np.asarray(maps[rows], dtype=np.float64), sigma=sigma)  # also across images
        flat = smoothed.reshape(len(rows), -1)
        scores.append(flat.max(axis=1) if reduce == "max" else flat.mean(axis=1))
    return np.concatenate(scores), order[:kept]


def released_protocol_auroc(maps: np.ndarray, labels, reduce: str = "max", batch_size: int = RELEASED_BATCH,
                            sigma: float = RELEASED_SIGMA) -> tuple[float, int]:
    """Image AUROC under the released protocol, and the number of images it scored."""
    scores, kept = released_protocol_scores(maps, labels, reduce, batch_size, sigma)
    return image_metrics(np.asarray(labels, dtype=int)[kept], scores)["image_auroc"], len(kept)
