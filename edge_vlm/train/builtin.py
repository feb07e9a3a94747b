"""The built-in model: a small LLaVA-Phi (same architecture, CLIP ViT -> 2-layer GELU MLP -> Phi with a biased
lm_head) trained from scratch on the synthetic world by train/configs/builtin.yaml, shipped in edge_vlm/assets/builtin.

Also the pieces that a plan file's top-level `synth:` and `evaluate:` keys run around the stages: writing the world
and measuring exact match per question type on its held-out split.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from edge_vlm.errors import EdgeVLMError

# write_world's arguments a plan's `synth:` step may not set (the plan controls them).
_NOT_WORLD_OPTIONS = ("spec", "force", "progress", "command")


def check_world_options(options: dict, source: str) -> None:
    """A plan's `synth:` mapping: `out` and write_world's keyword arguments, each of its default's type (an unknown
    key or a wrong type would otherwise end in a TypeError from deep inside the generator)."""
    import inspect

    from edge_vlm.data.synth import write_world

    params = {name: p.default for name, p in inspect.signature(write_world).parameters.items()
              if name not in _NOT_WORLD_OPTIONS and p.kind is p.POSITIONAL_OR_KEYWORD}
    unknown = sorted(set(map(str, options)) - set(params))
    if unknown:
        raise EdgeVLMError(f"{source}: unknown synth key(s) {unknown}; known: {sorted(params)}")
    if not isinstance(options.get("out"), str) or not options["out"]:
        raise EdgeVLMError(f"{source}: synth needs out (the folder the world is written to)")
    for key, value in options.items():
        default = params[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise EdgeVLMError(f"{source}: synth {key} must be true or false, got {value!r}")
        if (isinstance(default, int) and not isinstance(default, bool) or default is None) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise EdgeVLMError(f"{source}: synth {key} must be an integer >= 0, got {value!r}")


def ensure_world(out: str | Path, seed: int = 0, train: int = 10_000, eval_size: int = 1_400, image_size: int = 112,
                 extra_questions: int = 0, caption_counts: bool = False, **options) -> Path:
    """Write the synthetic world to `out` unless it is already there with the same seed and sizes."""
    from edge_vlm.data.synth import GENERATOR_VERSION, write_world

    out = Path(out)
    manifest_file = out / "world.json"
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeVLMError(f"{manifest_file} is damaged ({exc}); remove {out} to write the world again") from exc
        if not isinstance(manifest, dict):
            raise EdgeVLMError(f"{manifest_file} is not a world manifest; remove {out} to write the world again")
        counts = manifest.get("counts", {})
        same = (manifest.get("generator_version"), manifest.get("seed"), manifest.get("image_size"),
                counts.get("train_images"), counts.get("eval"), manifest.get("extra_questions", 0),
                manifest.get("caption_counts", False)) == (GENERATOR_VERSION, seed, image_size, train, eval_size,
                                                           extra_questions, caption_counts)
        if not same:
            raise EdgeVLMError(f"{out} holds another synthetic world ({manifest.get('command')}, generator version "
                               f"{manifest.get('generator_version')}); remove it or "
                               "point synth.out elsewhere")
        print(f"synthetic world: {out} (already written)")
        return out
    write_world(out, seed=seed, train=train, eval_size=eval_size, image_size=image_size,
                extra_questions=extra_questions, caption_counts=caption_counts, **options)
    return out


def evaluate_exact_match(checkpoint: str | Path, eval_file: str | Path, limit: int | None = None,
                         max_new_tokens: int = 8, batch_size: int = 32, progress: bool = True) -> dict:
    """Greedy answers of a checkpoint on the world's eval.json; exact match (the eval harness's rule) per
    question_type and overall. Returns {"overall", "per_type", "counts", "errors" (first wrong answers per type),
    "answers" (id -> answer)}.

    The prompt and pixels are the inference path's (edge_vlm.prompting.inference_prompt, edge_vlm.imaging.preprocess);
    questions whose prompts have the same token length are answered together by one `generate` call, without any
    padding, which is ~30x faster on a CPU than one question at a time and computes the same thing.
    """
    import torch
    from tqdm.auto import tqdm

    from edge_vlm.data.formats import read_llava_json
    from edge_vlm.eval.scorers import exact_match
    from edge_vlm.imaging import ImageConfig, preprocess
    from edge_vlm.model.checkpoint import load_checkpoint
    from edge_vlm.prompting import inference_prompt

    eval_file = Path(eval_file)
    samples = read_llava_json(eval_file)[:limit]
    if not samples:
        raise EdgeVLMError(f"no question in {eval_file}")
    model, tokenizer, meta = load_checkpoint(checkpoint)
    image_config = meta.image or ImageConfig(image_size=model.config.vision_config.image_size)
    groups: dict[tuple[int, bool], list] = defaultdict(list)
    for sample in samples:
        prompt = inference_prompt(sample.turns[0][0], has_image=sample.image is not None)
        ids = tokenizer.encode_prompt(prompt, model.num_image_tokens)
        groups[(len(ids), sample.image is not None)].append((sample, ids))
    said: dict[str, str] = {}
    bar = tqdm(total=len(samples), desc="eval", disable=not progress)
    for (_, has_image), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            ids = torch.tensor([m[1] for m in chunk])
            pixels = None
            if has_image:
                pixels = torch.stack([torch.from_numpy(preprocess(eval_file.parent / m[0].image, image_config))
                                      for m in chunk])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            for (sample, _), row in zip(chunk, out[:, ids.shape[1]:].tolist()):
                tokens = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
                said[sample.id] = tokenizer.decode(tokens).strip()
            bar.update(len(chunk))
    bar.close()
    right: Counter = Counter()
    total: Counter = Counter()
    errors: dict[str, list] = defaultdict(list)
    for sample in samples:
        kind = sample.extra.get("question_type", "all")
        gold = str(sample.extra.get("answer", sample.turns[0][1]))
        total[kind] += 1
        if exact_match(said[sample.id], gold):
            right[kind] += 1
        elif len(errors[kind]) < 5:
            errors[kind].append({"id": sample.id, "question": sample.turns[0][0], "answer": gold,
                                 "said": said[sample.id]})
    return {
        "overall": sum(right.values()) / sum(total.values()),
        "per_type": {k: right[k] / total[k] for k in sorted(total)},
        "counts": dict(sorted(total.items())),
        "errors": dict(errors),
        "answers": said,
    }


def format_accuracy(result: dict) -> str:
    lines = [f"{'question type':<14} {'n':>5} {'exact match':>12}"]
    for kind, accuracy in result["per_type"].items():
        lines.append(f"{kind:<14} {result['counts'][kind]:>5} {accuracy:>11.1%}")
    lines.append(f"{'overall':<14} {sum(result['counts'].values()):>5} {result['overall']:>11.1%}")
    return "\n".join(lines)
