"""Damaged and hostile pictures, wherever a picture enters: `ask --image`, `data validate`, training data and eval
questions. Each is refused in one line naming the file (exit 2); odd but valid pictures are answered."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.bad_inputs.conftest import snapshot
from tests.data.pictures import photo, png_claiming, write_damaged

CASES = {  # kind -> (what the error must say)
    "truncated_jpeg": "truncated",
    "truncated_png": "truncated",
    "empty": "empty (0 bytes)",
    "text": "not a picture",
    "bomb": "too large: 900,000,000 pixels",
    "bomb_under_pil_limit": "13000 x 13000 = 169,000,000 pixels",
    "zero_width": "cannot read image",
    "directory": "directory",
    "missing": "not found",
    "symlink_loop": "symbolic links",
    "char_device": "character device",
}


def _make(kind: str, folder: Path) -> Path:
    """One damaged input of `kind` under `folder` (generated here, never checked in)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("truncated_jpeg", "truncated_png", "empty", "text", "bomb"):
        return write_damaged(folder / kind)[kind]
    path = folder / f"{kind}.png"
    if kind == "bomb_under_pil_limit":  # PIL only warns at this size; our bound refuses it
        path.write_bytes(png_claiming(13_000, 13_000))
    elif kind == "zero_width":
        path.write_bytes(png_claiming(0, 64))
    elif kind == "thin_strip":  # 520,000 pixels on disk, but its padded square would be 169 million
        Image.new("L", (40, 13_000), 90).save(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink_loop":
        path.symlink_to(path)
    elif kind == "char_device":
        return Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", list(CASES))
def test_ask_refuses_a_damaged_picture(kind, refused, tiny_checkpoint, tmp_path):
    image = _make(kind, tmp_path / "in")
    outcome = refused("ask", "--model", tiny_checkpoint, "--image", image, "What is in the picture?",
                      match=CASES[kind], watch=[tmp_path / "in"])
    assert str(image) in outcome.stderr


def test_ask_refuses_a_thin_strip_that_would_pad_to_a_bomb(refused, tiny_checkpoint, tmp_path):
    """The padded square's size depends on the model's preprocessing, so this refusal comes after the model is loaded
    (the tiny checkpoint's random-weights note precedes it); the error is still one line naming the file."""
    strip = _make("thin_strip", tmp_path / "in")
    outcome = refused.run("ask", "--model", tiny_checkpoint, "--image", strip, "What is it?")
    errors = [line for line in outcome.stderr.splitlines() if not line.startswith("note:")]
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr
    assert len(errors) == 1 and f"image {strip} (40 x 13000) would become 13000 x 13000" in errors[0], outcome.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_ask_refuses_a_fifo_instead_of_hanging(refused, tiny_checkpoint, tmp_path):
    fifo = _make("fifo", tmp_path / "in")
    refused("ask", "--model", tiny_checkpoint, "--image", fifo, "What is it?", match="FIFO", isolated=True,
            timeout=60, watch=[tmp_path / "in"])


def _square(colour: str) -> Image.Image:
    """A large square of a colour of the synthetic world, drawn as the built-in model was trained to see it."""
    from edge_vlm.data.scene import Scene, Shape, draw_scene

    return draw_scene(Scene((Shape("square", colour, "large", "center", 0.0, 0.0, 1.0),)), 112)


def _transparent_everywhere(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    return Image.fromarray(np.dstack([array, np.zeros(array.shape[:2], dtype=np.uint8)]), "RGBA")


def _palette_square_transparent(image: Image.Image) -> Image.Image:
    """A palette picture whose square's palette entry is marked transparent (a tRNS chunk once saved as PNG)."""
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = palette.getpixel((56, 56))
    return palette


def _exif_rotated(path: Path, image: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation: rotate 270 degrees to display
    image.save(path, exif=exif, quality=95)


# name -> (the square's colour, how the file is written)
VALID = {
    "gif": ("red", lambda path, image: image.save(path.with_suffix(".gif"))),
    "webp": ("blue", lambda path, image: image.save(path.with_suffix(".webp"), lossless=True)),
    "tiff": ("green", lambda path, image: image.save(path.with_suffix(".tif"))),
    "cmyk_jpeg": ("orange", lambda path, image: image.convert("CMYK").save(path.with_suffix(".jpg"), quality=95)),
    "exif_rotated_jpeg": ("red", lambda path, image: _exif_rotated(path.with_suffix(".jpg"), image)),
    # as LLaVA reads them: the colours under the transparency are kept (over white, this would be a blank picture)
    "rgba_fully_transparent": ("purple", lambda path, image: _transparent_everywhere(image).save(path)),
    "palette_with_trns": ("yellow", lambda path, image: _palette_square_transparent(image).save(
        path, transparency=_palette_square_transparent(image).info["transparency"])),
}


@pytest.mark.parametrize("kind", list(VALID))
def test_odd_but_valid_pictures_are_answered_correctly(kind, refused, tmp_path):
    """The built-in model names the colour of a square (98% on held-out pictures): each odd format is read right."""
    colour, write = VALID[kind]
    write(tmp_path / "picture.png", _square(colour))
    (path,) = list(tmp_path.glob("picture.*"))
    outcome = refused.run("ask", "--image", path, "What color is the square?\n"
                          "Answer the question using a single word or phrase.")
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.stdout.strip().lower() == colour, (kind, outcome.stdout)


# ------------------------------------------------------------------------------------------------ data validate

VALIDATE_CASES = ["truncated_jpeg", "truncated_png", "empty", "text", "bomb", "thin_strip", "directory",
                  "symlink_loop"]


def _data_file(folder: Path, bad: dict[str, Path]) -> Path:
    """A LLaVA JSON file with one good picture and one sample per bad picture (id = its kind)."""
    photo().save(folder / "good.png")
    pictures = {"good": folder / "good.png", **bad}
    records = [{"id": kind, "image": os.path.relpath(path, folder), "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a picture"}]}
        for kind, path in pictures.items()]
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("kind", VALIDATE_CASES)
def test_data_validate_finds_each_damaged_picture(kind, refused, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    data = _data_file(folder, {kind: _make(kind, folder / "pictures")})
    outcome = refused("data", "validate", data, match=f"bad_image 1 [{kind}]", watch=[folder])
    assert f"    {kind}: " in outcome.stdout and "1 kept, 1 with problems" in outcome.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_data_validate_does_not_hang_on_a_fifo(refused, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    data = _data_file(folder, {"fifo": _make("fifo", folder / "pictures")})
    refused("data", "validate", data, match="bad_image 1 [fifo]", isolated=True, timeout=60, watch=[folder])


# ------------------------------------------------------------------------------------------------ training, eval


def _train_config(tmp_path: Path, checkpoint: Path, data: Path, policy: str) -> Path:
    config = {"stage": "finetune", "init_from": str(checkpoint), "data_path": str(data), "global_batch_size": 2,
              "per_device_batch_size": 2, "lr": 1e-3, "num_epochs": 1, "output_dir": str(tmp_path / f"run-{policy}"),
              "progress": False, "plot": False, "num_threads": 1, "on_bad_sample": policy}
    path = tmp_path / f"{policy}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_bomb_in_training_data_stops_or_is_skipped(refused, tiny_checkpoint, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    bomb = _make("bomb", folder / "pictures")
    data = _data_file(folder, {"bomb": bomb})
    before = snapshot(folder)
    # training prints its data report on stderr first, so the error is the one line that says "error:"
    outcome = refused.run("train", "--config", _train_config(tmp_path, tiny_checkpoint, data, "stop"))
    errors = [line for line in outcome.stderr.splitlines() if "error:" in line]
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr
    assert len(errors) == 1 and f"sample bomb: image {bomb} is too large" in errors[0], outcome.stderr
    assert snapshot(folder) == before
    done = refused.run("train", "--config", _train_config(tmp_path, tiny_checkpoint, data, "skip"))
    assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"skipped sample bomb (on_bad_sample: skip; 1 so far): image {bomb} is too large" in done.stderr
    assert (tmp_path / "run-skip" / "final").is_dir()


def test_a_bomb_in_an_eval_question_is_one_line_naming_it(refused, tiny_checkpoint, tmp_path):
    from tests.eval import layouts

    data = layouts.synth(tmp_path / "synth")
    picture = data / "images" / "eval_00001.png"
    picture.write_bytes(png_claiming(30_000, 30_000))
    out = tmp_path / "results"
    outcome = refused.run("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", data, "--out", out,
                          "--max-new-tokens", "2", "--no-progress")
    errors = [line for line in outcome.stderr.splitlines() if "error" in line]
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr
    assert len(errors) == 1 and f"image {picture} is too large" in errors[0], outcome.stderr
    # the questions of the other picture were answered and kept; a fixed picture lets the run resume
    answered = (out / "tiny" / "synth" / "answers.jsonl").read_text().splitlines()
    assert len(answered) == 2
    shutil.copy(data / "images" / "eval_00000.png", picture)
    resumed = refused.run("eval", "--model", tiny_checkpoint, "--benchmark", "synth", "--data", data, "--out", out,
                          "--max-new-tokens", "2", "--no-progress")
    assert resumed.code == 0 and "1 answered now, 2 from an earlier run" in resumed.stdout, resumed.stderr
