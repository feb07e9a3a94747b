"""`edge-vlm demo`: draw a few fresh synthetic pictures, ask the built-in model about them, show the answers.

    edge-vlm demo                      # 4 pictures, answers printed, a contact sheet written to edge-vlm-demo.png
    edge-vlm demo --n 6 --seed 7 --out demo.png
    edge-vlm demo --model runs/builtin/finetune/final
"""

from __future__ import annotations

import argparse

from edge_vlm.cli.args import folder, seed, thread_count

HELP = "show the built-in model answering questions about a few new synthetic pictures"

SOFTWARE = "edge-vlm demo"  # the contact sheet's PNG Software text chunk: how a rerun knows the file is ours
QUESTIONS_PER_PICTURE = 3
MAX_PICTURES = 100  # the contact sheet is one row of 300 px columns: 100 of them is already 30,000 px wide


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, type=folder, help="a checkpoint dir (default: the built-in model)")
    parser.add_argument("--n", type=int, default=4, help=f"pictures to draw, 1 to {MAX_PICTURES} (default 4)")
    parser.add_argument("--seed", type=seed, default=2024,
                        help="which pictures and questions, 0 to 2**32-1 (default 2024)")
    parser.add_argument("--out", default="edge-vlm-demo.png",
                        help="contact sheet PNG (default edge-vlm-demo.png; an existing file is replaced only if a "
                             "demo wrote it); '-' to skip")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads, 1 to 4x the cores")


def run(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    import torch

    from edge_vlm.data.questions import QUESTION_TYPES, ask, supports
    from edge_vlm.data.scene import draw_scene, sample_scene
    from edge_vlm.engine import GenerationConfig, answer
    from edge_vlm.errors import EdgeVLMError
    from edge_vlm.eval.scorers import exact_match
    from edge_vlm.model.engine import TorchEngine

    if not 1 <= args.n <= MAX_PICTURES:
        raise EdgeVLMError(f"--n must be 1 to {MAX_PICTURES}, got {args.n}")
    if args.out != "-":  # before the model runs, not after; an existing file is replaced only if a demo wrote it
        from edge_vlm.fileio import check_output_file, check_output_folder

        if Path(args.out).is_dir():
            raise EdgeVLMError(f"--out {args.out} is a folder: give the contact sheet's file name")
        check_output_file(args.out, "contact sheet", _is_contact_sheet)
        check_output_folder(Path(args.out).parent, "folder of the contact sheet")
    if args.threads:
        torch.set_num_threads(args.threads)
    from edge_vlm.assets import builtin_model_dir

    model_dir = Path(args.model) if args.model else builtin_model_dir()
    if args.model is None and not (model_dir / "model.safetensors").is_file():
        raise EdgeVLMError(f"the built-in model is missing from {model_dir}: retrain it with "
                           "`edge-vlm train --config train/configs/builtin.yaml` (see its MODEL_CARD.md)")
    engine = TorchEngine.from_checkpoint(model_dir)
    config = GenerationConfig(max_new_tokens=8)
    rng = random.Random(f"demo-{args.seed}")
    size = max(112, engine.image_config.image_size)
    panels, right, asked = [], 0, 0
    print(f"model: {model_dir}")
    for index in range(args.n):
        scene = sample_scene(rng)
        image = draw_scene(scene, size)
        prepared = engine.prepare_image(image)
        kinds = [k for k in QUESTION_TYPES if supports(scene, k)]
        lines = []
        print(f"\npicture {index + 1}: {scene.to_dict()}")
        for kind in rng.sample(kinds, min(QUESTIONS_PER_PICTURE, len(kinds))):
            made = ask(scene, rng, kind, **({"answer_yes": rng.random() < 0.5} if kind == "exist" else {}))
            if made is None:
                continue
            question, gold = made
            said = answer(engine, prepared, question, config=config)
            ok = exact_match(said, gold)
            right, asked = right + ok, asked + 1
            short = question.split("\n")[0] if kind != "mc" else question.rsplit("\n", 1)[0]
            print(f"  Q: {short.replace(chr(10), ' | ')}\n  A: {said}   [{'right' if ok else f'wrong, expected {gold}'}]")
            lines.append((short.split("\n")[0] + (" (A/B/C...)" if kind == "mc" else ""), said, ok))
        panels.append((image, lines))
    print(f"\n{right}/{asked} answers right")
    if args.out != "-":
        out = _contact_sheet(panels, Path(args.out))
        print(f"pictures with questions and answers: {out}")
    return 0


def _is_contact_sheet(path) -> bool:
    from edge_vlm.fileio import png_text

    return png_text(path).get("Software") == SOFTWARE


def _contact_sheet(panels, out):
    """One column per picture: the picture, then each question and the model's answer (green right, red wrong)."""
    import io

    from PIL import Image, ImageDraw, PngImagePlugin

    from edge_vlm.fileio import atomic_write

    scale, width, line_h = 2, 300, 14
    rows = max(len(lines) for _, lines in panels)
    picture = panels[0][0].size[0] * scale
    sheet = Image.new("RGB", (width * len(panels), picture + 12 + rows * 2 * line_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for column, (image, lines) in enumerate(panels):
        x = column * width
        sheet.paste(image.resize((picture, picture)), (x + (width - picture) // 2, 4))
        y = picture + 12
        for question, said, ok in lines:
            draw.text((x + 6, y), question[:46], fill=(40, 40, 40))
            draw.text((x + 6, y + line_h), f"-> {said}", fill=(20, 140, 40) if ok else (200, 30, 30))
            y += 2 * line_h
    image = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    sheet.save(image, format="PNG", pnginfo=info)
    return atomic_write(out, image.getvalue(), "contact sheet")
