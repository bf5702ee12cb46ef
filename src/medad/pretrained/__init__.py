"""medad's bundled few-shot models, shipped inside the package with their model cards: D²4FAD-NN weights, and the
generic student of ``--method adapted_student``.

The weights (``d24fad_nn.safetensors``, a medad checkpoint stored in float16) were trained by
``benchmarks/bundled_model.py`` on the normal training images of every registered shared task but
``headct`` (held out so that ``medad demo`` scores a task the model never saw).  ``model_card.json``
records the training tasks and image counts, the commit, the settings, the file's SHA-256 and reference
scores that the tests reproduce; ``MODEL_CARD.md`` says the same for people.  The generic student
(``generic_student.safetensors``, ``benchmarks/bundled_generic_student.py``) holds headct out too; its card is
``generic_student_card.json`` and ``GENERIC_STUDENT_CARD.md``.
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
#: the bundled generic student of ``--method adapted_student`` (``benchmarks/bundled_generic_student.py``)
GENERIC_METHOD = "adapted_student"
GENERIC_WEIGHTS_FILE = "generic_student.safetensors"
GENERIC_CARD_JSON = "generic_student_card.json"
GENERIC_CARD_MD = "GENERIC_STUDENT_CARD.md"
GENERIC_NAME = "medad bundled generic student (generic_student.safetensors)"


def bundled_checkpoint() -> Path:
    """The bundled model's checkpoint file."""
    return PRETRAINED_DIR / WEIGHTS_FILE


@cache
def model_card() -> dict[str, Any]:
    """The bundled model's card (``model_card.json``)."""
    return json.loads((PRETRAINED_DIR / CARD_JSON).read_text())


def generic_student_checkpoint() -> Path:
    """The bundled generic student's checkpoint file."""
    return PRETRAINED_DIR / GENERIC_WEIGHTS_FILE


@cache
def generic_student_card() -> dict[str, Any]:
    """The bundled generic student's card (``generic_student_card.json``)."""
    return json.loads((PRETRAINED_DIR / GENERIC_CARD_JSON).read_text())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
