"""Preprocessing against transformers' CLIPImageProcessorPil (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil
from transformers.image_transforms import convert_to_rgb

from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import PAD_COLOR, ImageConfig, expand_to_square, load_image, preprocess, to_rgb

RNG = np.random.default_rng(0)


def _images() -> dict[str, Image.Image]:
    rgb = Image.fromarray(RNG.integers(0, 256, (150, 230, 3), dtype=np.uint8))
    rgba = Image.fromarray(RNG.integers(0, 256, (200, 120, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(RNG.integers(0, 256, (90, 300), dtype=np.uint8), "L")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = Image.fromarray(RNG.integers(0, 65536, (120, 100), dtype=np.uint16))
    return {"rgb": rgb, "rgba": rgba, "gray": gray, "palette": palette, "uint16": sixteen}


def _reference(image: Image.Image, size: int) -> np.ndarray:
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return processor(images=image, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("name", ["rgb", "rgba", "gray", "palette", "uint16"])
@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_matches_clip_image_processor_after_the_same_padding(name, aspect):
    image = _images()[name]
    config = ImageConfig(image_size=336, aspect=aspect)
    rgb = to_rgb(image)
    reference_input = expand_to_square(rgb) if aspect == "pad" else rgb
    expected = _reference(reference_input, 336)
    got = preprocess(image, config)
    assert got.shape == (3, 336, 336) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["rgb", "rgba", "gray", "palette"])
def test_rgb_conversion_matches_transformers(name):
    image = _images()[name]
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), convert_to_rgb(image, return_numpy=True))


def test_sixteen_bit_keeps_its_range():
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_pad_centres_on_the_mean_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = np.asarray(expand_to_square(image))
    assert square.shape == (40, 40, 3)
    assert tuple(square[0, 0]) == PAD_COLOR and tuple(square[39, 39]) == PAD_COLOR
    assert tuple(square[10, 0]) == (255, 0, 0) and tuple(square[29, 39]) == (255, 0, 0)
    assert tuple(square[9, 20]) == PAD_COLOR and tuple(square[30, 20]) == PAD_COLOR


def test_numpy_input_equals_pil_input():
    array = RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(array), preprocess(Image.fromarray(array)))


def test_bad_inputs(tmp_path):
    with pytest.raises(EdgeVLMError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(EdgeVLMError, match="directory"):
        load_image(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(EdgeVLMError, match="truncated"):
        load_image(tmp_path / "truncated.png")
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 100)
    with pytest.raises(EdgeVLMError, match="cannot read"):
        load_image(tmp_path / "junk.jpg")
    with pytest.raises(EdgeVLMError):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(EdgeVLMError):
        ImageConfig(aspect="stretch")
