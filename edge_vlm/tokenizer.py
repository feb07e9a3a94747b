"""Tokenizer loading and prompt encoding on the `tokenizers` library alone (no torch, no transformers).

Phi-2's tokenizer is GPT-2 byte-level BPE: `<|endoftext|>` is bos/eos/unk, no BOS is added (docs/prompts.md).
`<image>` is an added special token (one id); `encode_prompt` expands it to the model's image-token count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from edge_vlm.errors import EdgeVLMError
from edge_vlm.prompting import EOS_TEXT, IMAGE_PLACEHOLDER, Segment

IGNORE_INDEX = -100


class TextTokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` with the LLaVA-Phi conventions."""

    def __init__(self, tokenizer: Tokenizer):
        self.backend = tokenizer
        if tokenizer.token_to_id(IMAGE_PLACEHOLDER) is None:
            tokenizer.add_special_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)])
        eos = tokenizer.token_to_id(EOS_TEXT)
        if eos is None:
            raise EdgeVLMError(f"the tokenizer has no {EOS_TEXT} token; is it a Phi-2 (GPT-2 BPE) tokenizer?")
        self.eos_token_id: int = eos
        self.image_token_id: int = tokenizer.token_to_id(IMAGE_PLACEHOLDER)

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextTokenizer:
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise EdgeVLMError(f"no tokenizer.json in {directory}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises plain Exception for a malformed file
            raise EdgeVLMError(f"cannot read {path}: {exc}") from exc

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def save(self, directory: str | Path, model_max_length: int = 2048) -> None:
        """Write tokenizer.json plus a tokenizer_config.json that transformers' AutoTokenizer understands."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOS_TEXT,
            "eos_token": EOS_TEXT,
            "unk_token": EOS_TEXT,
            "pad_token": EOS_TEXT,
            "extra_special_tokens": {"image_token": IMAGE_PLACEHOLDER},
            "add_bos_token": False,
            "model_max_length": model_max_length,
            "padding_side": "right",
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def expand_images(self, ids: Iterable[int], num_image_tokens: int) -> list[int]:
        out: list[int] = []
        for token in ids:
            out.extend([token] * num_image_tokens if token == self.image_token_id else [token])
        return out

    def encode_prompt(self, text: str, num_image_tokens: int) -> list[int]:
        """Inference: the prompt's ids with each `<image>` expanded to `num_image_tokens` image ids."""
        return self.expand_images(self.encode(text), num_image_tokens)

    def encode_segments(self, segments: list[Segment], num_image_tokens: int) -> tuple[list[int], list[int]]:
        """Training: (input_ids, labels). Labels copy the ids of supervised segments and are IGNORE_INDEX elsewhere,
        image positions included. Segments are encoded one by one: every segment boundary of our templates is a
        split point of the byte-level pre-tokenizer, so this equals encoding the whole text (a test checks it)."""
        ids: list[int] = []
        labels: list[int] = []
        for segment in segments:
            piece = self.expand_images(self.encode(segment.text), num_image_tokens)
            ids.extend(piece)
            if segment.supervised:
                labels.extend(IGNORE_INDEX if t == self.image_token_id else t for t in piece)
            else:
                labels.extend([IGNORE_INDEX] * len(piece))
        return ids, labels

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Turns a stream of token ids into text pieces. Byte-level BPE can split one character over several tokens,
    so a piece is held back while the decoded text ends in an incomplete character."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[self.emitted :], len(text)
        return piece


def iter_text(tokenizer: TextTokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode a token stream piece by piece (see StreamDecoder)."""
    decoder = StreamDecoder(tokenizer)
    for token_id in token_ids:
        piece = decoder.push(token_id)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> TextTokenizer:
    """Train a small GPT-2-style byte-level BPE offline (for tiny test models and the built-in model).
    `<|endoftext|>` gets id 0 (Phi-2 has it at 50256; only the name matters to our code), `<image>` the next id."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(backend)
