"""Broken, odd and huge input images: a clean error naming the file, or a score; never a traceback or gigabytes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from breakit import assert_clean_error
from PIL import Image

from medad.data.io import ImageReadError, decode_image


def png_bomb(path: Path, side: int) -> Path:
    """A grey PNG of side × side black pixels, compressed in chunks (a few hundred KB for 13000²)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    body = b"".join(compressor.compress(row * 500) for _ in range(side // 500)) + compressor.compress(
        row * (side % 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _save(array: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(array, **options).save(path)
    return path


def _noise(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (rng.random(shape) * high).astype(dtype)


#: name → (write the file into a folder, the text the error must hold); every one exits 2 naming the file
BROKEN = {
    "zero_bytes.png": (lambda p: p.write_bytes(b""), "file is empty"),
    "truncated.png": (lambda p: p.write_bytes(_png_bytes()[:120]), "corrupt or truncated"),
    "text_as.png": (lambda p: p.write_text("not an image at all"), "is not an image Pillow can identify"),
    "one_pixel.png": (lambda p: _save(np.zeros((1, 1), np.uint8), p), "only 1×1 pixels"),
    "constant.png": (lambda p: _save(np.full((64, 64), 7, np.uint8), p), "constant"),
    "nan.tif": (lambda p: _save(np.where(_noise((64, 64), np.float32) > 0.5, np.nan, 0.3).astype(np.float32), p,
                                mode="F"), "NaN or infinite"),
    "truncated.dcm": (lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00"), "DICOM"),
    "notes.txt": (lambda p: p.write_text("hello"), "is not an image or volume format"),
    "bomb.png": (lambda p: png_bomb(p, 13000), "budget"),
}


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(_noise((64, 64))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_image_is_refused_naming_it(cli, rd4ad_checkpoint, tmp_path, name):
    """Rows: a decompression bomb took 3.8 GB (now refused from its header); the others already behaved."""
    write, expected = BROKEN[name]
    path = tmp_path / "in" / name
    path.parent.mkdir()
    write(path)
    outcome = cli("predict", "--checkpoint", rd4ad_checkpoint, path, "--out", tmp_path / "o")
    assert_clean_error(outcome, name, expected, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


#: odd but valid images: scored
ODD = {
    "sixteen_bit.png": lambda p: _save((_noise((64, 64), np.uint16) // 16).astype(np.uint16), p),
    "rgba.png": lambda p: _save(np.dstack([_noise((64, 64, 3)), np.full((64, 64), 200, np.uint8)]), p),
    "ünïcode näme 影像.png": lambda p: _save(_noise((64, 64)), p),
    "palette.gif": lambda p: Image.fromarray(_noise((64, 64, 3))).convert("P").save(p),
    "wide.jpg": lambda p: _save(_noise((40, 300, 3)), p),
}


@pytest.mark.parametrize("name", list(ODD))
def test_an_odd_but_valid_image_is_scored(cli, rd4ad_checkpoint, tmp_path, name):
    path = tmp_path / "in" / name
    path.parent.mkdir()
    ODD[name](path)
    outcome = cli("predict", "--checkpoint", rd4ad_checkpoint, path, "--out", tmp_path / "o", "--quiet")
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err and outcome.written_outside(tmp_path / "o") == []
    assert (tmp_path / "o" / "scores.csv").read_text().count("\n") == 2


def test_a_dicom_without_suffix_is_read(cli, rd4ad_checkpoint, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "scan"), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (_noise((64, 64), np.uint16) // 16).astype(np.uint16).tobytes()
    (tmp_path / "in").mkdir()
    ds.save_as(str(tmp_path / "in" / "scan"), enforce_file_format=True)
    assert pydicom.dcmread(str(tmp_path / "in" / "scan")).Rows == 64
    outcome = cli("predict", "--checkpoint", rd4ad_checkpoint, tmp_path / "in" / "scan", "--out", tmp_path / "o",
                  "--quiet")
    assert outcome.code == 0, outcome.err


def test_images_above_the_pixel_budget_are_refused_or_decoded_reduced(tmp_path, monkeypatch):
    """A PNG over the budget is refused from its header; a JPEG over it is decoded at 1/2, 1/4 or 1/8."""
    monkeypatch.setenv("MEDAD_MAX_PIXELS", "100000")
    big_png = _save(_noise((600, 600)), tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="budget of 0.1 million pixels"):
        decode_image(big_png)
    big_jpeg = _save(_noise((1000, 800, 3)), tmp_path / "big.jpg")
    decoded = decode_image(big_jpeg)
    height, width = decoded.array.shape[:2]
    assert height * width <= 100_000 and (height, width) in {(250, 200), (125, 100)}
    huge_jpeg = _save(_noise((3000, 3000)), tmp_path / "huge.jpg")  # 1/8 is still over the budget
    with pytest.raises(ImageReadError, match="budget"):
        decode_image(huge_jpeg)
    small = _save(_noise((300, 300)), tmp_path / "small.png")
    assert decode_image(small).array.shape == (300, 300)


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path):
    """Row: one 13000 × 13000 PNG of 237 KB took 3.8 GB; now its header alone decides."""
    import resource

    bomb = png_bomb(tmp_path / "bomb.png", 13000)
    assert bomb.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="13000×13000"):
        decode_image(bomb)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100
