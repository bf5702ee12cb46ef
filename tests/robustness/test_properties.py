"""Property tests: whatever the option text or the file's bytes, shape and dtype, a clean value or a clean error."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from PIL import Image  # noqa: E402

from medad.data.io import ImageReadError, decode_image, read_image  # noqa: E402
from medad.options import NUMBERS, OptionError, number_type, parse_threshold  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMBER_TEXT = st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str),
                        st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "-1", " 3 ", "1_000", "0x10", "1e-320"]))


@PROPERTY
@given(key=st.sampled_from(sorted(NUMBERS)), text=NUMBER_TEXT)
def test_a_numeric_option_is_a_value_in_its_rule_or_an_argparse_error(key, text):
    rule = NUMBERS[key]
    try:
        value = number_type(key)(text)
    except argparse.ArgumentTypeError as error:
        assert str(error).startswith("expected ") and "\n" not in str(error)
        return
    assert isinstance(value, int) if rule.integer else isinstance(value, float) and math.isfinite(value)
    assert rule.minimum is None or value >= rule.minimum
    assert not rule.exclusive or value > rule.minimum
    assert rule.maximum is None or value <= rule.maximum


@PROPERTY
@given(text=NUMBER_TEXT)
def test_a_threshold_is_a_keyword_or_a_finite_number(text):
    try:
        value = parse_threshold(text)
    except OptionError:
        return
    assert value in ("auto", "none") or math.isfinite(value)


@PROPERTY
@given(data=st.binary(max_size=2048), signature=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                                                                   b"GIF89a", b"II*\x00"]))
def test_random_bytes_decode_or_raise_image_read_error(tmp_path, data, signature):
    path = tmp_path / "random.png"
    path.write_bytes(signature + data)
    try:
        decoded = decode_image(path)
    except ImageReadError as error:
        assert str(path) in str(error)
        return
    assert decoded.array.size > 0


@PROPERTY
@given(array=st.one_of(
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([3, 4]))),
    arrays(np.uint16, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)),
           elements=st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, -np.inf])))),
    suffix=st.sampled_from([".png", ".tif"]))
def test_random_images_read_as_unit_tensors_or_raise_image_read_error(tmp_path, array, suffix):
    path = tmp_path / f"random{suffix}"
    try:
        Image.fromarray(array).save(path)
    except (OSError, ValueError, KeyError, TypeError):
        return  # a combination Pillow cannot write is no reader's business
    try:
        image = read_image(path)
    except ImageReadError as error:
        assert str(path) in str(error)
        return
    assert image.ndim == 3 and image.shape[0] == 3 and image.shape[1:] == array.shape[:2]
    assert bool(((image >= 0) & (image <= 1)).all())
