"""medad's bundled few-shot model: D²4FAD-NN weights shipped inside the package, with their model card.

The weights (``d24fad_nn.safetensors``, a medad checkpoint stored in float16) were trained by
``benchmarks/bundled_model.py`` on the normal training images of every registered shared task but
``headct`` (held out so that ``medad demo`` scores a task the model never saw).  ``model_card.json``
records the training tasks and image counts, the commit, the settings, the file's SHA-256 and reference
scores that the tests reproduce; ``MODEL_CARD.md`` says the same for people.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

#: the folder holding the bundled files (package data)
PRETRAINED_DIR = Path(__file__).resolve().parent
WEIGHTS_FILE = "d24fad_nn.safetensors"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
#: the name the commands print for the bundled model
BUNDLED_NAME = "medad bundled D²4FAD-NN (d24fad_nn.safetensors)"
#: the task the bundled model never saw (the demo's target)
HELD_OUT_TASK = "headct"


def bundled_checkpoint() -> Path:
    """The bundled model's checkpoint file."""
    return PRETRAINED_DIR / WEIGHTS_FILE


@cache
def model_card() -> dict[str, Any]:
    """The bundled model's card (``model_card.json``)."""
    return json.loads((PRETRAINED_DIR / CARD_JSON).read_text())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
