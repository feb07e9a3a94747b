"""How many image tokens the decoder receives, and how they are chosen. Torch-free (the runtime and `info` read it).

LLaVA-Phi hands all of CLIP's patch tokens to Phi-2 (576 at 336 px). A reduced setting keeps K of them, chosen
without training from the vision tower's own attention, the idea of VisionZip (Yang et al., 2024) and PruMerge:
the CLS token's attention over the patches at the feature layer, averaged over heads, ranks them; the top
`dominant` patches are kept in their original order and, optionally, the rest are merged by key similarity into
`contextual` tokens placed after them. K = dominant + contextual. The computation is edge_vlm.model.token_selection.

The default is every patch token (no selection, the paper's model). A reduced setting changes the model's answers,
so it is chosen explicitly (`--image-tokens K`, or a target profile's `image_tokens`), recorded in the bundle
manifest, and shown by `info`, `ask` and `bench`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_vlm.errors import EdgeVLMError

METHOD = "cls-attention"


@dataclass(frozen=True)
class TokenSelection:
    """Keep `dominant` patch tokens by CLS attention, and merge the others into `contextual` tokens."""

    dominant: int
    contextual: int = 0
    method: str = METHOD

    @property
    def image_tokens(self) -> int:
        return self.dominant + self.contextual

    def to_dict(self) -> dict:
        return {"method": self.method, "dominant": self.dominant, "contextual": self.contextual}

    def describe(self) -> str:
        merged = f" + {self.contextual} contextual (merged)" if self.contextual else ""
        return f"{self.method}: {self.dominant} dominant{merged}"


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def choose(image_tokens: int | None, contextual: int | None, patch_tokens: int,
           what: str = "--image-tokens") -> TokenSelection | None:
    """The selection for `image_tokens` K of the model's `patch_tokens` N, `contextual` of them merged: None keeps
    every patch token (K None or N, nothing merged); anything impossible is one EdgeVLMError naming the value."""
    contextual = 0 if contextual is None else contextual
    if image_tokens is None:
        if contextual:
            raise EdgeVLMError(f"contextual tokens ({contextual}) need {what} K below the model's {patch_tokens} "
                               "image tokens: they are part of K")
        return None
    if not _whole(image_tokens) or not 1 <= image_tokens <= patch_tokens:
        raise EdgeVLMError(f"{what} {image_tokens!r} is not possible: the model has {patch_tokens} image tokens, "
                           f"choose a whole number from 1 to {patch_tokens}")
    if not _whole(contextual) or not 0 <= contextual < image_tokens:
        raise EdgeVLMError(f"contextual tokens {contextual!r} must be a whole number from 0 to {image_tokens - 1} "
                           f"(at least one of the {image_tokens} image tokens is kept as it is)")
    if image_tokens == patch_tokens:
        if contextual:
            raise EdgeVLMError(f"{what} {image_tokens} keeps every image token, so nothing is left to merge into "
                               f"{contextual} contextual tokens")
        return None
    return TokenSelection(image_tokens - contextual, contextual)


def from_manifest(section, patch_tokens: int, where: str) -> TokenSelection | None:
    """A manifest's `token_selection` (null, or {"method", "dominant", "contextual"}) -> TokenSelection or None.
    `where` names the manifest in the error."""
    if section is None:
        return None
    if not isinstance(section, dict) or section.get("method") != METHOD:
        raise EdgeVLMError(f"{where}: vision.token_selection {section!r} is not null or a {METHOD!r} selection")
    dominant, contextual = section.get("dominant"), section.get("contextual", 0)
    if not (_whole(dominant) and _whole(contextual) and dominant >= 1 and contextual >= 0
            and dominant + contextual < patch_tokens):
        raise EdgeVLMError(f"{where}: vision.token_selection needs dominant >= 1 and contextual >= 0 whole numbers "
                           f"that add up to fewer than the {patch_tokens} patch tokens, got {section!r}")
    return TokenSelection(dominant, contextual)


def summary(image_tokens: int, patch_tokens: int, selection: TokenSelection | None) -> str:
    """'36 (every patch token)' or '18 of 36 (REDUCED; cls-attention: 18 dominant)' for info, ask and bench."""
    if selection is None:
        return f"{image_tokens} (every patch token)"
    return f"{image_tokens} of {patch_tokens} (REDUCED; {selection.describe()})"


def reduced_note(image_tokens: int, patch_tokens: int, selection: TokenSelection | None) -> str | None:
    """The one line `ask` prints on stderr when the model sees fewer image tokens than its patches, else None."""
    if selection is None:
        return None
    return (f"note: the image is given to the model as {image_tokens} of its {patch_tokens} tokens "
            f"({selection.describe()}); answers can differ from the full model's")


def checkpoint_patch_tokens(directory) -> int | None:
    """The patch tokens N of a checkpoint, from its config.json alone (no torch, no weights), so a K that cannot be
    is refused before the model loads; None when the config cannot be read (loading then says what is wrong)."""
    import json
    from pathlib import Path

    try:
        vision = json.loads((Path(directory) / "config.json").read_text()).get("vision_config")
        size, patch = vision["image_size"], vision["patch_size"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    if not (_whole(size) and _whole(patch) and size >= patch >= 1):
        return None
    return (size // patch) ** 2
