"""medad.data.io: every reader on small files written here, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datahelpers import ramp, save_png, write_dicom
from medad.data.io import (ImageReadError, decode_image, file_kind, image_info, read_image,
                           read_mask)


def _grey(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.float32 and t.ndim == 3 and t.shape[0] == 3
    assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2]), "grey must be replicated"
    return t[0].numpy()


# ------------------------------------------------------------------ PNG / JPEG / BMP / TIFF


def test_png_8bit_grey_is_divided_by_255(tmp_path):
    a = ramp()
    t = read_image(save_png(tmp_path / "g.png", a))
    assert t.shape == (3, 24, 32)
    np.testing.assert_allclose(_grey(t), a / 255.0, atol=1e-6)


def test_png_16bit_minmax_full_and_window(tmp_path):
    a = ramp(lo=1000, hi=4000, dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    g = _grey(read_image(p))  # default: min-max per image
    assert g.min() == 0.0 and g.max() == 1.0
    np.testing.assert_allclose(g, (a - 1000) / 3000.0, atol=1e-6)
    full = _grey(read_image(p, high_bit="full"))
    np.testing.assert_allclose(full, a / 65535.0, atol=1e-6)
    win = _grey(read_image(p, window=(2000, 2000)))  # [1000, 3000] -> [0, 1], clipped
    np.testing.assert_allclose(win, np.clip((a - 1000) / 2000.0, 0, 1), atol=1e-6)


def test_constant_16bit_image_is_zero_not_nan(tmp_path):
    p = tmp_path / "c.png"
    Image.fromarray(np.full((8, 8), 777, np.uint16)).save(p)
    assert float(read_image(p).abs().sum()) == 0.0


def test_tiff_16bit_and_bmp(tmp_path):
    a = ramp(lo=0, hi=1023, dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "x.tif")
    g = _grey(read_image(tmp_path / "x.tif"))
    np.testing.assert_allclose(g, a / 1023.0, atol=1e-6)
    b = ramp()
    Image.fromarray(b).save(tmp_path / "x.BMP")
    np.testing.assert_allclose(_grey(read_image(tmp_path / "x.BMP")), b / 255.0, atol=1e-6)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0      # fully transparent -> black
    rgba[1, 1, 3] = 128    # half -> value * 128/255
    t = read_image(save_png(tmp_path / "a.png", rgba))
    assert t.shape == (3, 4, 5)
    assert t[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(t[:, 2, 2].numpy(), [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_allclose(t[:, 1, 1].numpy(),
                               np.rint(np.array([200, 100, 50]) * 128 / 255) / 255, atol=1e-6)


def test_la_is_composited_on_black(tmp_path):
    la = np.stack([np.full((3, 3), 200, np.uint8), np.full((3, 3), 255, np.uint8)], -1)
    la[0, 0, 1] = 0
    p = tmp_path / "la.png"
    Image.fromarray(la).save(p)  # H×W×2 uint8 -> mode LA
    assert Image.open(p).mode == "LA"
    g = _grey(read_image(p))
    assert g[0, 0] == 0.0 and abs(g[1, 1] - 200 / 255) < 1e-6


def test_palette_image_uses_palette_colours(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1, 0, 0, 2, 2])
    p = tmp_path / "p.png"
    img.save(p)
    assert Image.open(p).mode == "P"
    t = read_image(p)
    assert t[:, 0, 1].tolist() == [1.0, 0.0, 0.0]   # index 1 = red
    assert t[:, 0, 2].tolist() == [0.0, 1.0, 0.0]   # index 2 = green
    assert t[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_palette_with_transparency_is_composited(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 255, 255, 255, 255, 255] + [0] * (254 * 3))
    img.putdata([0, 1])
    p = tmp_path / "pt.png"
    img.save(p, transparency=0)
    t = read_image(p)
    assert t[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and t[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_jpeg_with_upper_case_suffix_and_png_named_jpg(tmp_path):
    a = np.stack([ramp(), ramp()[::-1], np.full((24, 32), 90, np.uint8)], -1)
    p = tmp_path / "scan.JPG"
    Image.fromarray(a).save(p, format="JPEG", quality=95)
    assert file_kind(p) == "image"
    t = read_image(p)
    assert t.shape == (3, 24, 32)
    assert float((t.permute(1, 2, 0) - torch.from_numpy(a / 255.0).float()).abs().mean()) < 0.03
    q = tmp_path / "really_png.jpg"
    Image.fromarray(ramp()).save(q, format="PNG")  # content decides the decoder
    np.testing.assert_allclose(_grey(read_image(q)), ramp() / 255.0, atol=1e-6)
    assert image_info(q)["format"] == "PNG"


def test_rgb_with_equal_channels_decodes_like_grey(tmp_path):
    a = ramp()
    p1 = save_png(tmp_path / "l.png", a)
    p2 = save_png(tmp_path / "rgb.png", np.stack([a, a, a], -1))
    d1, d2 = decode_image(p1), decode_image(p2)
    assert d2.mode == "RGB" and d1.array.shape == d2.array.shape == (24, 32)
    assert torch.equal(read_image(p1), read_image(p2))


def test_path_with_spaces_and_non_ascii(tmp_path):
    p = save_png(tmp_path / "dossier ü 脑" / "image ö 1.png", ramp())
    np.testing.assert_allclose(_grey(read_image(p)), ramp() / 255.0, atol=1e-6)


# ------------------------------------------------------------------ DICOM


def test_dicom_rescale_and_header_window(tmp_path):
    stored = np.array([[0, 1024, 1044, 1064], [1084, 1104, 2000, 3000]], np.uint16)
    p = write_dicom(tmp_path / "ct.dcm", stored, slope=1, intercept=-1024, center=40, width=80)
    g = _grey(read_image(p))
    hu = stored.astype(float) - 1024  # -1024, 0, 20, 40, 60, 80, 976, 1976
    np.testing.assert_allclose(g, np.clip(hu / 80.0, 0, 1), atol=1e-6)
    assert g[0, 3] == pytest.approx(0.5)


def test_dicom_given_window_overrides_header_and_slope_applies(tmp_path):
    stored = np.array([[0, 50, 100, 150]], np.uint16)
    p = write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-100, center=0, width=10)
    g = _grey(read_image(p, window=(100, 400)))  # values -100, 0, 100, 200 -> [-100, 300]
    np.testing.assert_allclose(g, [[0.0, 0.25, 0.5, 0.75]], atol=1e-6)


def test_dicom_without_window_is_min_max(tmp_path):
    stored = np.array([[-500, 0], [500, 1500]], np.int16)
    g = _grey(read_image(write_dicom(tmp_path / "x.dcm", stored)))
    np.testing.assert_allclose(g, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 100], [200, 400]], np.uint16)
    m1 = _grey(read_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")))
    m2 = _grey(read_image(write_dicom(tmp_path / "m2.dcm", stored)))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == 1.0 and m1[1, 1] == 0.0


def test_dicom_without_suffix_is_sniffed(tmp_path):
    p = write_dicom(tmp_path / "IM0001", np.array([[0, 10]], np.uint16))
    assert file_kind(p) == "dicom"
    np.testing.assert_allclose(_grey(read_image(p)), [[0.0, 1.0]])


def test_dicom_without_pixel_data_is_a_clear_error(tmp_path):
    p = write_dicom(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16), pixel_data=False)
    with pytest.raises(ImageReadError, match="no pixel data") as err:
        read_image(p)
    assert err.value.path == p and "sr.dcm" in str(err.value)


# ------------------------------------------------------------------ masks


def test_masks_any_positive_value_is_anomalous(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 1:4] = 255
    m[4, 4] = 1  # a 0/1 mask value counts too
    t = read_mask(save_png(tmp_path / "m.png", m))
    assert t.shape == (1, 6, 6) and t.dtype == torch.float32
    assert set(t.unique().tolist()) == {0.0, 1.0} and t.sum() == 7
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[0, 0, 2] = 200
    assert read_mask(save_png(tmp_path / "rgb_m.png", rgb)).sum() == 1


def test_jpeg_mask_is_thresholded_at_half(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    p = tmp_path / "m.jpg"
    Image.fromarray(m).save(p, quality=70)
    t = read_mask(p)
    assert abs(int(t.sum()) - 256) <= 12 and t[0, 0, 0] == 0 and t[0, 16, 16] == 1


# ------------------------------------------------------------------ bad input


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\)") as err:
        read_image(p)
    assert str(p) in str(err.value) and "What to do" in str(err.value)


def test_truncated_png(tmp_path):
    p = save_png(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64),
                                                                        dtype=np.uint8))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated") as err:
        read_image(p)
    assert err.value.path == p


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=str(p.name)):
        read_image(p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(p)


def test_unsupported_suffix_and_missing_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    with pytest.raises(ImageReadError, match="not a supported image format"):
        read_image(p)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    q = tmp_path / "noext"
    q.write_bytes(b"\x00" * 200)
    with pytest.raises(ImageReadError, match="no suffix and is not DICOM"):
        read_image(q)


def test_image_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)


def test_window_width_must_be_positive(tmp_path):
    p = save_png(tmp_path / "g.png", ramp())
    with pytest.raises(ValueError, match="width must be > 0"):
        read_image(p, window=(10, 0))


def test_palette_mask_uses_the_index(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 255, 255, 0, 0, 0, 9, 9, 9] + [0] * (253 * 3))  # index 0 is white
    img.putdata([0, 1, 2])
    p = tmp_path / "pm.png"
    img.save(p)
    assert read_mask(p)[0, 0].tolist() == [0.0, 1.0, 1.0]


def test_missing_optional_library_gives_install_hint(tmp_path, monkeypatch):
    import sys

    from medad.data.io import MissingDependencyError

    p = write_dicom(tmp_path / "x.dcm", np.array([[0, 10]], np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install pydicom"):
        read_image(p)
    assert issubclass(MissingDependencyError, ImportError)


def test_text_file_named_dcm(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_text("hello, this is not DICOM at all\n" * 5)
    with pytest.raises(ImageReadError, match="fake.dcm: is not a DICOM file"):
        read_image(p)
