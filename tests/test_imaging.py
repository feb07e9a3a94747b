"""Preprocessing against the reference: LLaVA's reading (`Image.open(path).convert("RGB")`, then its `expand2square`)
followed by transformers' CLIPImageProcessorPil. The pictures are written to disk by the test and read back through
the path API; the expected pixels never come from edge_vlm's own conversion."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import CLIPImageProcessorPil

from edge_vlm import imaging
from edge_vlm.errors import EdgeVLMError
from edge_vlm.imaging import PAD_COLOR, ImageConfig, expand_to_square, load_image, preprocess, to_rgb
from tests.data.pictures import png_claiming, write_damaged

RNG = np.random.default_rng(0)
# The reference's own Image.open(p).convert("RGB") of a palette with a tRNS alpha table warns; ours must not.
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency expressed in bytes:UserWarning")
DOC = Path(__file__).resolve().parents[1] / "docs" / "preprocessing.md"


def _noise(height: int, width: int, channels: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _rgba() -> Image.Image:
    """Random colours under every alpha level, fully transparent pixels included (their stored colour must survive)."""
    array = _noise(120, 200, 4)
    array[:40, :, 3] = 0
    array[40:80, :, 3] = 255
    return Image.fromarray(array, "RGBA")


def _palette_with_transparent_entry() -> Image.Image:
    image = Image.fromarray(_noise(90, 140, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3
    return image


def _palette_with_alpha_table() -> Image.Image:
    """A palette PNG whose tRNS chunk gives every entry its own alpha (the 'bytes' form of palette transparency)."""
    image = Image.fromarray(_noise(70, 110, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = bytes(range(0, 256, 16))
    return image


# name -> (build the picture, file name, save options)
PICTURES = {
    "rgb_png": (lambda: Image.fromarray(_noise(150, 230, 3)), "rgb.png", {}),
    "rgba_png": (_rgba, "rgba.png", {}),
    "la_png": (lambda: Image.fromarray(_noise(100, 70, 2), "LA"), "la.png", {}),
    "palette_trns_index_png": (_palette_with_transparent_entry, "p_index.png", {}),
    "palette_trns_table_png": (_palette_with_alpha_table, "p_table.png", {}),
    "gray_png": (lambda: Image.fromarray(_noise(90, 300, 1)[..., 0], "L"), "gray.png", {}),
    "one_bit_png": (lambda: Image.fromarray(_noise(64, 80, 1)[..., 0] > 127), "bits.png", {}),
    "cmyk_jpeg": (lambda: Image.fromarray(_noise(80, 120, 4), "CMYK"), "cmyk.jpg", {"quality": 95}),
    "rgb_jpeg": (lambda: Image.fromarray(_noise(130, 90, 3)), "rgb.jpg", {"quality": 90}),
    "rgba_webp": (_rgba, "rgba.webp", {"lossless": True}),
    "rgba_tiff": (_rgba, "rgba.tif", {}),
    "gif_transparency": (_palette_with_transparent_entry, "p.gif", {}),
}


def _write(name: str, folder: Path) -> Path:
    build, filename, options = PICTURES[name]
    path = folder / filename
    image = build()
    if "transparency" in image.info:
        options = {**options, "transparency": image.info["transparency"]}
    image.save(path, **options)
    return path


def _llava_expand2square(pil_img, background_color):
    """LLaVA's `expand2square` (llava/mm_utils.py), as written there."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def _processor(size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _reference_from_rgb(rgb: Image.Image, aspect: str, size: int) -> np.ndarray:
    """LLaVA's steps after reading: pad with the processor's mean as 8-bit (as LLaVA computes it), then CLIP."""
    assert rgb.mode == "RGB"
    # LLaVA's processor (transformers 4.31) only called convert("RGB"). Today's composites on white any picture with a
    # transparency key, and convert("RGB") of a palette picture leaves one (as an RGB colour): give it the pixels only.
    rgb.info.pop("transparency", None)
    processor = _processor(size)
    if aspect == "pad":
        rgb = _llava_expand2square(rgb, tuple(int(x * 255) for x in processor.image_mean))
    return processor(images=rgb, return_tensors="np")["pixel_values"][0]


def _reference(path: Path, aspect: str, size: int) -> np.ndarray:
    """How LLaVA reads a picture file: Image.open(path).convert("RGB")."""
    return _reference_from_rgb(Image.open(path).convert("RGB"), aspect, size)


@pytest.mark.parametrize("name", list(PICTURES))
@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_files_match_llava_reading_and_the_clip_processor(name, aspect, tmp_path):
    path = _write(name, tmp_path)
    got = preprocess(path, ImageConfig(image_size=336, aspect=aspect))
    assert got.shape == (3, 336, 336) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(path, aspect, 336), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["rgba_png", "la_png", "palette_trns_index_png", "palette_trns_table_png"])
def test_transparency_is_dropped_not_composited_on_white(name, tmp_path):
    """The case the old conversion got wrong: pixels under transparency keep their stored colour, as in training."""
    path = _write(name, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = np.asarray(to_rgb(load_image(path)))
    assert not caught, [str(w.message) for w in caught]  # PIL's palette advice stays off the user's stderr
    np.testing.assert_array_equal(ours, np.asarray(Image.open(path).convert("RGB")))
    opened = Image.open(path).convert("RGBA")
    white = Image.alpha_composite(Image.new("RGBA", opened.size, (255, 255, 255, 255)), opened).convert("RGB")
    assert (ours != np.asarray(white)).any(), "the test picture must have transparency that matters"


def test_exif_orientation_is_not_applied(tmp_path):
    """LLaVA's Image.open(...).convert("RGB") ignores the EXIF orientation tag, so the model was trained on the
    stored pixels; we read them the same way."""
    image = Image.fromarray(_noise(60, 140, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[0x0112] == 6
    assert load_image(path).size == (140, 60)
    for aspect in ("pad", "square"):
        got = preprocess(path, ImageConfig(image_size=64, aspect=aspect))
        np.testing.assert_allclose(got, _reference(path, aspect, 64), atol=1e-6, rtol=0)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert upright.size == (60, 140)
    assert np.abs(preprocess(path, ImageConfig(image_size=64, aspect="square"))
                  - _reference_from_rgb(upright, "square", 64)).max() > 0.5


def _scaled_16_to_8(values: np.ndarray) -> np.ndarray:
    """The deliberate 16-bit reading, computed independently: [0, 65535] -> [0, 255] rounded to nearest (no ties can
    occur: v * 255 / 65535 is never k + 1/2 for an integer v)."""
    return np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_sixteen_bit_png_is_scaled_not_saturated(aspect, tmp_path):
    values = RNG.integers(0, 65536, (120, 100), dtype=np.uint16)
    values[0, :3] = (0, 32768, 65535)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    scaled = Image.fromarray(_scaled_16_to_8(values)).convert("RGB")
    assert np.asarray(scaled)[0, :3, 0].tolist() == [0, 128, 255]
    got = preprocess(path, ImageConfig(image_size=336, aspect=aspect))
    np.testing.assert_allclose(got, _reference_from_rgb(scaled, aspect, 336), atol=1e-6, rtol=0)
    # the reference's own reading saturates: almost every pixel is white, a different picture
    assert (np.asarray(Image.open(path).convert("RGB"))[..., 0] == 255).mean() > 0.9
    # a uint16 array is read as the same picture as the 16-bit file
    np.testing.assert_array_equal(np.asarray(to_rgb(load_image(values))), np.asarray(scaled))


def test_documentation_states_the_deliberate_differences_and_the_bound():
    text = DOC.read_text(encoding="utf-8")
    assert 'convert("RGB")' in text and "16-bit" in text and "deliberate" in text.lower()
    assert "EXIF" in text and f"{imaging.MAX_IMAGE_PIXELS:,}" in text
    assert str(PAD_COLOR) in text


def test_eight_bit_modes_are_exactly_pil_convert():
    images = {
        "I": Image.fromarray(RNG.integers(0, 256, (20, 30)).astype(np.int32)),
        "F": Image.fromarray(RNG.uniform(1.5, 255, (20, 30)).astype(np.float32)),
        "YCbCr": Image.fromarray(_noise(20, 30, 3), "YCbCr"),
        "PA": _palette_with_transparent_entry().convert("PA"),
        "RGBX": Image.fromarray(_noise(20, 30, 4), "RGBX"),
    }
    for mode, image in images.items():
        assert image.mode == mode
        np.testing.assert_array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")), err_msg=mode)


def test_unit_float_pictures_are_scaled():
    values = RNG.uniform(0, 1, (20, 30)).astype(np.float32)
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(values)))[..., 1], expected)


def test_pad_centres_on_the_mean_colour():
    assert PAD_COLOR == tuple(int(x * 255) for x in _processor(336).image_mean)
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = np.asarray(expand_to_square(image))
    assert square.shape == (40, 40, 3)
    assert tuple(square[0, 0]) == PAD_COLOR and tuple(square[39, 39]) == PAD_COLOR
    assert tuple(square[10, 0]) == (255, 0, 0) and tuple(square[29, 39]) == (255, 0, 0)
    assert tuple(square[9, 20]) == PAD_COLOR and tuple(square[30, 20]) == PAD_COLOR


def test_numpy_and_pil_inputs_equal_the_file(tmp_path):
    array = _noise(64, 48, 3)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    np.testing.assert_array_equal(preprocess(array), preprocess(path))
    np.testing.assert_array_equal(preprocess(Image.open(path)), preprocess(path))


# ------------------------------------------------------------------------------------------------ refusals


def test_missing_directory_and_damaged_files(tmp_path):
    with pytest.raises(EdgeVLMError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(EdgeVLMError, match="directory"):
        load_image(tmp_path)
    files = write_damaged(tmp_path / "bad")
    expected = {"truncated_jpeg": "truncated", "truncated_png": "truncated", "empty": "empty (0 bytes)",
                "text": "not a picture", "bomb": "too large"}
    assert set(files) == set(expected)
    for kind, path in files.items():
        with pytest.raises(EdgeVLMError) as info:
            load_image(path)
        message = str(info.value)
        assert expected[kind] in message and str(path) in message and "\n" not in message, kind
    with pytest.raises(EdgeVLMError):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(EdgeVLMError):
        ImageConfig(aspect="stretch")


@pytest.mark.parametrize("side", [13_000, 30_000])  # between PIL's warning and error thresholds, and above both
def test_bombs_are_refused_from_the_header_without_a_warning(side, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(side, side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        with pytest.raises(EdgeVLMError, match="too large") as info:
            load_image(path)
        assert warnings.filters == before  # our read leaves the process-wide filters as they were
    assert f"{side * side:,} pixels" in str(info.value) and f"{imaging.MAX_IMAGE_PIXELS:,}" in str(info.value)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_the_bound_applies_to_arrays_and_pil_images(monkeypatch):
    huge = np.broadcast_to(np.zeros(1, dtype=np.uint8), (20_000, 10_000))  # 200 MP, no memory behind it
    with pytest.raises(EdgeVLMError, match="too large"):
        load_image(huge)
    monkeypatch.setattr(imaging, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(EdgeVLMError, match="40 x 30 = 1,200 pixels"):
        load_image(Image.new("RGB", (40, 30)))
    assert load_image(Image.new("RGB", (40, 25))).size == (40, 25)


def test_a_thin_picture_cannot_blow_up_in_padding(tmp_path):
    path = tmp_path / "thin.png"
    Image.new("L", (50, 13_000), 90).save(path)
    with pytest.raises(EdgeVLMError, match="13000 x 13000"):
        preprocess(path, ImageConfig(aspect="pad"))
    assert preprocess(path, ImageConfig(image_size=32, aspect="square")).shape == (3, 32, 32)


def _without_hanging(function, *args):
    """Run function(*args) in a thread; a hang fails the test instead of blocking the suite."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the read hung"
    return outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_non_regular_files_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    error = _without_hanging(load_image, fifo)["error"]
    assert isinstance(error, EdgeVLMError) and "FIFO" in str(error) and str(fifo) in str(error)
    with pytest.raises(EdgeVLMError, match="character device"):
        load_image(os.devnull)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(EdgeVLMError, match="symbolic links"):
        load_image(loop)


def test_encoded_bytes_get_the_same_checks(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_noise(20, 30, 3)).save(path)
    decoded = imaging.decode_image_bytes(path.read_bytes(), "frame 7")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(Image.open(path)))
    with pytest.raises(EdgeVLMError, match="image frame 7 is too large"):
        imaging.decode_image_bytes(png_claiming(30_000, 30_000), "frame 7")
    with pytest.raises(EdgeVLMError, match="frame 7 is empty"):
        imaging.decode_image_bytes(b"", "frame 7")
    with pytest.raises(EdgeVLMError, match="cannot read image frame 7: image file is truncated"):
        imaging.decode_image_bytes(path.read_bytes()[:-30], "frame 7")


def test_eps_is_not_handed_to_ghostscript(tmp_path):
    """An EPS file would be rendered by Ghostscript inside PIL; edge-vlm refuses the format instead."""
    from PIL import Image as PILImage

    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.imaging import load_image

    eps = tmp_path / "drawing.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n%%EOF\n")
    with PILImage.open(eps) as opened:  # PIL itself would take it: the refusal is ours
        assert opened.format == "EPS"
    with pytest.raises(EdgeVLMError, match="drawing.eps"):
        load_image(eps)
