"""A tiny data set written in the real formats (LLaVA JSON, ShareGPT JSON), for the training tests.

Small on purpose: a colour per image, so a few steps of the tiny model show the loss moving.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}


def write_tiny_world(root: Path, n_images: int = 24, size: int = 56) -> Path:
    """images/*.png, pretrain.json (captions), finetune.json (2-turn + text-only), sft.json (ShareGPT)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    names = list(COLOURS)
    pretrain, finetune, sft = [], [], []
    for i in range(n_images):
        colour = names[i % len(names)]
        image = Image.new("RGB", (size + 8 * (i % 3), size), (255, 255, 255))
        ImageDraw.Draw(image).rectangle([8, 8, size - 8, size - 8], fill=COLOURS[colour])
        rel = f"images/{i:03d}.png"
        image.save(root / rel)
        pretrain.append({"id": f"p{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": f"a {colour} square"}]})
        finetune.append({"id": f"f{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": colour},
            {"from": "human", "value": "Is there a square?"}, {"from": "gpt", "value": "Yes"}]})
        if i % 4 == 0:
            finetune.append({"id": f"t{i}", "conversations": [
                {"from": "human", "value": "Name a color."}, {"from": "gpt", "value": colour}]})
        sft.append({"id": f"s{i}", "conversations": [
            {"from": "human", "value": f"What is {i % 5} plus one?"}, {"from": "gpt", "value": str(i % 5 + 1)}]})
    for name, records in (("pretrain", pretrain), ("finetune", finetune), ("sft", sft)):
        (root / f"{name}.json").write_text(json.dumps(records))
    return root
