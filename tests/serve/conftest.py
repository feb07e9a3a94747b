"""Fixtures of the serve tests (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.helpers import Server, builtin_int4


@pytest.fixture(scope="session")
def int4_bundle(tmp_path_factory) -> Path:
    return builtin_int4(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> dict[str, Path]:
    """Synthetic-world scenes as PNG and JPEG files, drawn at the built-in model's image size."""
    import random

    from edge_vlm.data.scene import draw_scene, sample_scene

    folder = tmp_path_factory.mktemp("pictures")
    rng = random.Random(3)
    files = {}
    for index in range(3):
        picture = draw_scene(sample_scene(rng), 84)
        files[f"scene{index}.png"] = folder / f"scene{index}.png"
        picture.save(files[f"scene{index}.png"])
    files["scene0.jpg"] = folder / "scene0.jpg"
    draw_scene(sample_scene(rng), 160).save(files["scene0.jpg"], quality=90)
    # a picture with an alpha channel, half transparent on the left: the server must read it as `ask` does
    rgba = draw_scene(sample_scene(rng), 84).convert("RGBA")
    alpha = rgba.getchannel("A").point(lambda _: 255)
    alpha.paste(60, (0, 0, 42, 84))
    rgba.putalpha(alpha)
    files["scene-rgba.png"] = folder / "scene-rgba.png"
    rgba.save(files["scene-rgba.png"])
    return files


@pytest.fixture(scope="session")
def bundle_server(int4_bundle, tmp_path_factory):
    """The INT4 bundle served with small image limits (so the oversize cases are cheap to send)."""
    server = Server("--bundle", int4_bundle, "--model-name", "builtin-int4", "--max-image-bytes", "200000", "--max-image-pixels", "1000000",
                    log=tmp_path_factory.mktemp("serve") / "stderr.txt")
    yield server
    code = server.stop()
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr(), server.stderr()


