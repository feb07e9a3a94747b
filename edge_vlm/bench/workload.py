"""The benchmark's query: one image and an image prompt of exactly --prompt-tokens tokens. Torch-free.

The prompt is the real inference template ("{system} USER: <image>\\n{question} ASSISTANT:") with the question
padded by filler text. The pieces around the question are encoded separately and the filler is cut to the exact
token count, so the length is exact for any tokenizer (re-encoding a grown string with BPE is not monotone).
"""

from __future__ import annotations

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import PHI2_SYSTEM, inference_prompt
from edge_vlm.tokenizer import TextTokenizer

QUESTION = "Describe the image in detail."
FILLER = (" The robot looks at the table, the shelf, the door and the floor, and notes every object, its colour, "
          "its shape and where it is.")
_MARK = "\u2063QUESTION\u2063"  # invisible separator: never part of the template


def synthetic_image(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image (gradient + noise): not square, so the pad/resize path is exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    image = image + rng.integers(0, 32, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _layouts(tokenizer: TextTokenizer, num_image_tokens: int):
    """(description, ids before the filler, ids after it) of each prompt layout, longest first."""
    full = inference_prompt(_MARK)
    variants = [("phi-2_v0 template", full)]
    if full.startswith(PHI2_SYSTEM):
        variants.append(("phi-2_v0 template without its system sentence", full[len(PHI2_SYSTEM):].lstrip()))
    for description, text in variants:
        before, after = text.split(_MARK)
        yield (description, tokenizer.encode_prompt(before, num_image_tokens) + tokenizer.encode(QUESTION),
               tokenizer.encode(after))


def minimum_prompt_tokens(tokenizer: TextTokenizer, num_image_tokens: int) -> int:
    """The shortest image prompt `prompt_ids` can build: the image tokens, the turn's text and the question."""
    return min(len(head) + len(tail) for _, head, tail in _layouts(tokenizer, num_image_tokens))


def too_short(prompt_tokens: int, shortest: int, num_image_tokens: int, label: str = "--prompt-tokens") -> EdgeVLMError:
    return EdgeVLMError(
        f"{label} {prompt_tokens} is shorter than the image prompt itself ({shortest} tokens at least: "
        f"{num_image_tokens} image tokens + the turn's text + the question): use at least {shortest}"
    )


def prompt_ids(tokenizer: TextTokenizer, num_image_tokens: int, prompt_tokens: int) -> tuple[list[int], str]:
    """(ids of the image prompt, exactly `prompt_tokens` long with the image tokens, a description of the prompt).

    The full phi-2_v0 template needs about 38 text tokens around LLaVA-Phi's 576 image tokens, so a 600-token prompt
    (the issue's CPU target) cannot hold it: then the system sentence is left out (the USER/ASSISTANT turn, the
    image and the question stay) and the description says so.
    """
    for description, head, tail in _layouts(tokenizer, num_image_tokens):
        need = prompt_tokens - len(head) - len(tail)
        if need < 0:
            continue
        filler_ids = tokenizer.encode(FILLER)
        filler = (filler_ids * (need // len(filler_ids) + 1))[:need]
        ids = head + filler + tail
        assert len(ids) == prompt_tokens
        return ids, f"{description}, {need} filler tokens after the question"
    raise too_short(prompt_tokens, minimum_prompt_tokens(tokenizer, num_image_tokens), num_image_tokens)
