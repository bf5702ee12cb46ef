"""The CLI starts without torch/timm; images are decoded in DataLoader workers with errors intact."""

import subprocess
import sys

import pytest
import torch

from medad.data.io import ImageReadError
from medad.data.tasks import Sample
from medad.data.images import load_images

PROBE = """
import sys
from medad.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy modules:", sorted(name for name in ("torch", "timm", "torchvision", "matplotlib", "flask", "onnx",
                                               "onnxruntime") if name in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["data", "list"], ["data", "check", "PHANTOM"],
                                  ["export", "--help"], ["serve", "--help"]])
def test_help_version_and_data_commands_do_not_import_torch(argv, phantom_head):
    argv = [str(phantom_head.root) if arg == "PHANTOM" else arg for arg in argv]
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert "heavy modules: []" in result.stdout, result.stdout[-500:] + result.stderr[-2000:]


def test_worker_processes_decode_the_same_images_in_order(phantom_head):
    samples = phantom_head.test + phantom_head.train
    images, masks = load_images(samples, 48, workers=0)
    in_workers, worker_masks = load_images(samples, 48, workers=2)
    assert torch.equal(images, in_workers) and torch.equal(masks, worker_masks)
    assert masks.sum() > 0  # the lesion masks came through


def test_an_unreadable_file_stops_the_load_with_its_own_error(phantom_head, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [*phantom_head.train, Sample(broken, 0, "good")]
    with pytest.raises(ImageReadError) as error:
        load_images(samples, 48, workers=2)
    assert error.value.path == broken
