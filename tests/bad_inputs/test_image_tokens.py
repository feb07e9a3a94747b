"""Image-token settings that cannot be, and manifests that lie about them: `export`, `ask`, `info` refuse each in one
line (exit 2) before any model loads or any file is written; the setting is shown where a user runs the model.

The tiny model has 16 image tokens (56 px / patch 14). The reduced bundle (6 of 16, 2 of them merged) is exported once
per session (tests/export/bundles.py) and copied before each damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.export.bundles import bundle as make_bundle
from tests.export.conftest import export_base, exportable_tiny, fp32_bundle  # noqa: F401


@pytest.fixture(scope="session")
def reduced_bundle(export_base):  # noqa: F811
    return make_bundle(export_base, "fp32", image_tokens=6, contextual_tokens=2)


@pytest.fixture
def reduced(reduced_bundle, tmp_path):
    """A private copy of the session's 6-of-16 fp32 bundle."""
    return Path(shutil.copytree(reduced_bundle, tmp_path / "reduced"))


@pytest.fixture
def picture(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.png"
    Image.new("RGB", (70, 50), (10, 120, 240)).save(path)
    return path


def _edit(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("flags,match", [
    (["--image-tokens", "17"], "--image-tokens 17 is not possible: the model has 16 image tokens"),
    (["--image-tokens", "0"], "--image-tokens 0 is not possible"),
    (["--image-tokens", "-4"], "--image-tokens -4 is not possible"),
    (["--image-tokens", "6", "--contextual-tokens", "6"], "contextual tokens 6 must be a whole number from 0 to 5"),
    (["--image-tokens", "16", "--contextual-tokens", "1"], "nothing is left to merge"),
    (["--contextual-tokens", "2"], "contextual tokens (2) need --image-tokens K below the model's 16 image tokens"),
    (["--image-tokens", "6", "--max-token-accuracy-drop", "1.5"], "--max-token-accuracy-drop must be from 0 to 1"),
    (["--image-tokens", "6", "--max-token-accuracy-drop", "nan"], "--max-token-accuracy-drop must be from 0 to 1"),
    (["--image-tokens", "six"], "invalid int value: 'six'"),
])
def test_export_refuses_impossible_settings_before_loading(refused, exportable_tiny, tmp_path, flags, match):  # noqa: F811
    refused("export", "--model", exportable_tiny, "--out", tmp_path / "out", *flags, match=match,
            watch=[tmp_path, exportable_tiny])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line,match", [
    ("image_tokens: 40", "target tokens-40's image_tokens 40 is not possible: the model has 16 image tokens"),
    ("image_tokens: -1", "image_tokens must be a whole number >= 1 or null"),
    ("image_tokens: many", "image_tokens must be a whole number >= 1 or null"),
    ("image_tokens: 8\ncontextual_tokens: 1.5", "contextual_tokens must be a whole number >= 0"),
])
def test_export_refuses_a_profile_with_impossible_tokens(refused, exportable_tiny, tmp_path, line, match):  # noqa: F811
    name = "tokens-40" if "40" in line else "tokens"
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"name: {name}\nexecution_provider: cpu\ndefault_precision: fp32\nprecisions: [fp32]\n"
                       f"vision_precision: fp32\naccuracy_level: 4\n{line}\n")
    refused("export", "--model", exportable_tiny, "--out", tmp_path / "out", "--target", profile, match=match,
            watch=[tmp_path, exportable_tiny])


@pytest.mark.parametrize("flags,match", [
    (["--image-tokens", "17"], "--image-tokens 17 is not possible: the model has 16 image tokens"),
    (["--image-tokens", "0"], "--image-tokens 0 is not possible"),
    (["--image-tokens", "4", "--contextual-tokens", "9"], "contextual tokens 9 must be"),
])
def test_ask_model_refuses_impossible_settings(refused, exportable_tiny, flags, match):  # noqa: F811
    refused("ask", "--model", exportable_tiny, *flags, "What colour?", match=match, watch=[exportable_tiny])


def test_ask_preset_refuses_impossible_settings(refused):
    refused("ask", "--preset", "tiny", "--image-tokens", "20", "What colour?",
            match="--image-tokens 20 is not possible: the model has 16 image tokens")


@pytest.mark.parametrize("flags", [["--image-tokens", "8"], ["--image-tokens", "6", "--contextual-tokens", "0"]])
def test_ask_bundle_refuses_another_setting_than_its_own(refused, reduced, flags):
    refused("ask", "--bundle", reduced, *flags, "What colour?", match="was exported with 6 (2 contextual), fixed",
            watch=[reduced])


@pytest.mark.parametrize("change,match", [
    (lambda m: m["vision"].__setitem__("image_tokens", 7), "vision.image_tokens 7 differs from model.num_image_tokens 6"),
    (lambda m: m["vision"].__setitem__("patch_tokens", 5), "image tokens no more than patch tokens"),
    (lambda m: m["vision"].__setitem__("patch_tokens", "16"), "must be whole numbers >= 1"),
    (lambda m: m.__setitem__("vision", [6, 16]), "the 'vision' section is not an object"),
    (lambda m: m["vision"]["token_selection"].__setitem__("method", "random"),
     "is not null or a 'cls-attention' selection"),
    (lambda m: m["vision"]["token_selection"].update(dominant=0, contextual=6), "needs dominant >= 1"),
    (lambda m: m["vision"]["token_selection"].update(dominant=5), "gives 7 image tokens of 16, but vision.image_tokens "
                                                                  "is 6"),
    (lambda m: m["vision"].__setitem__("token_selection", None), "gives 16 image tokens of 16, but"),
    (lambda m: (m["model"].__setitem__("num_image_tokens", 16), m["vision"].update(image_tokens=16,
                                                                                   token_selection=None)),
     "says each image gives 16 image tokens of 160, but"),
    (lambda m: m["model"].__setitem__("num_image_tokens", 16), "differs from model.num_image_tokens 16"),
])
@pytest.mark.parametrize("verb", ["info", "ask"])
def test_a_manifest_lying_about_image_tokens_is_refused(refused, reduced, picture, change, match, verb):
    _edit(reduced, change)
    argv = ["info", reduced] if verb == "info" else ["ask", "--bundle", reduced, "--image", picture, "What colour?"]
    outcome = refused(*argv, match=match, watch=[reduced])
    assert "manifest.json" in outcome.stderr


def test_an_old_bundle_without_the_section_gets_every_token(refused, fp32_bundle, tmp_path):  # noqa: F811
    """A bundle written before the section existed reads as every patch token (and is still checked against its
    graph)."""
    copy = Path(shutil.copytree(fp32_bundle, tmp_path / "old"))
    _edit(copy, lambda m: m.pop("vision"))
    outcome = refused.run("info", copy)
    assert outcome.code == 0, outcome.stderr
    assert "image tokens      16 (every patch token)" in outcome.stdout


def test_info_and_ask_show_a_reduced_setting(refused, reduced, picture):
    outcome = refused.run("info", reduced)
    assert outcome.code == 0, outcome.stderr
    assert "image tokens      6 of 16 (REDUCED; cls-attention: 4 dominant + 2 contextual (merged))" in outcome.stdout
    outcome = refused.run("ask", "--bundle", reduced, "--image", picture, "--max-new-tokens", "3", "What colour?")
    assert outcome.code == 0, outcome.stderr
    notes = [line for line in outcome.stderr.splitlines() if "image tokens" in line or "tokens (" in line]
    assert notes == ["note: the image is given to the model as 6 of its 16 tokens (cls-attention: 4 dominant + 2 "
                     "contextual (merged)); answers can differ from the full model's"]


def test_ask_says_nothing_at_every_token(refused, exportable_tiny, picture):  # noqa: F811
    outcome = refused.run("ask", "--model", exportable_tiny, "--image", picture, "--image-tokens", "16",
                          "--max-new-tokens", "2", "What colour?")
    assert outcome.code == 0, outcome.stderr
    assert "given to the model as" not in outcome.stderr
    outcome = refused.run("ask", "--model", exportable_tiny, "--image", picture, "--image-tokens", "5",
                          "--max-new-tokens", "2", "What colour?")
    assert outcome.code == 0, outcome.stderr
    assert "note: the image is given to the model as 5 of its 16 tokens (cls-attention: 5 dominant)" in outcome.stderr


@pytest.mark.parametrize("lines,backends,match", [
    ("image_tokens: 17", "torch-fp32", "--image-tokens 17 is not possible: the model has 16 image tokens"),
    ("image_tokens: 0", "torch-fp32", "image-tokens must be a whole number from 1"),
    ("image_tokens: 8\ncontextual_tokens: 8", "torch-fp32", "contextual tokens 8 must be a whole number from 0 to 7"),
    ("image_tokens: 8", "ort-fp32", "image_tokens 8 (0 contextual) was asked for, but the bundle"),
    ("image_tokens: 6\ncontextual_tokens: 0", "ort-fp32", "gives 6 of 16 (2 contextual), fixed at export"),
])
def test_bench_refuses_a_token_setting_it_cannot_run(refused, reduced, exportable_tiny, tmp_path, lines, backends,  # noqa: F811
                                                     match):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(f"settings:\n  {lines.replace(chr(10), chr(10) + '  ')}\n")
    refused("bench", "--scenario", scenario, "--model", exportable_tiny, "--bundle", reduced, "--backend", backends,
            "--runs", "1", "--warmup", "0", "--quiet", match=match, watch=[reduced, exportable_tiny])


@pytest.fixture
def world(tmp_path):
    from edge_vlm.data.synth import write_world

    write_world(tmp_path / "world", seed=3, train=1, eval_size=3, image_size=56, progress=False)
    return tmp_path / "world"


@pytest.mark.parametrize("suffixes,match", [
    (("@17", ""), "eval source exportable-tiny@17: image tokens 17 is not possible: the model has 16 image tokens"),
    (("@6c6", ""), "contextual tokens 6 must be a whole number from 0 to 5"),
    (("", "@8"), "reduced@8: the bundle"),
    (("", "@6"), "gives 6 of 16 image tokens (2 contextual), fixed at export"),
])
def test_eval_refuses_a_source_token_setting_it_cannot_run(refused, reduced, exportable_tiny, world, tmp_path,  # noqa: F811
                                                           suffixes, match):
    refused("eval", "--compare", f"{exportable_tiny}{suffixes[0]}", f"{reduced}{suffixes[1]}", "--benchmark",
            "synth", "--data", world, "--out", tmp_path / "results", "--no-progress", match=match,
            watch=[reduced, exportable_tiny, world])
    assert not (tmp_path / "results").exists()


def test_eval_sources_carry_their_setting(tmp_path):
    """DIR@K and DIR@KcC name a setting; a folder whose own name ends so is taken as it is."""
    from edge_vlm.eval.engines import make_sources, split_tokens

    assert split_tokens("runs/ckpt@144") == ("runs/ckpt", 144, None)
    assert split_tokens("runs/ckpt@64c10") == ("runs/ckpt", 64, 10)
    assert split_tokens("runs/ckpt@x") == ("runs/ckpt@x", None, None)
    odd = tmp_path / "ckpt@12"
    odd.mkdir()
    (odd / "config.json").write_text("{}")
    assert split_tokens(str(odd)) == (str(odd), None, None)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    full, reduced_source = make_sources([str(tmp_path / "ckpt"), f"{tmp_path / 'ckpt'}@9c2"])
    assert (full.label, reduced_source.label) == ("ckpt", "ckpt@9c2")
    assert (reduced_source.image_tokens, reduced_source.contextual_tokens) == (9, 2)
    assert reduced_source.description == f"model:{(tmp_path / 'ckpt').resolve()}@9c2" != full.description
