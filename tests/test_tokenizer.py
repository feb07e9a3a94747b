"""Prompt encoding: image expansion, per-segment encoding equals whole-text encoding, label masking, streaming."""

from __future__ import annotations

from edge_vlm.model.factory import small_tokenizer
from edge_vlm.prompting import render_chat, render_plain, to_text
from edge_vlm.tokenizer import IGNORE_INDEX, StreamDecoder, iter_text


def test_image_placeholder_expands_to_the_image_token_count():
    tok = small_tokenizer()
    ids = tok.encode_prompt(to_text(render_chat([("What?", None)])), num_image_tokens=16)
    assert ids.count(tok.image_token_id) == 16
    assert tok.eos_token_id not in ids  # no BOS is added (docs/prompts.md)


def test_segment_encoding_equals_whole_text_encoding():
    tok = small_tokenizer()
    for segments in (render_chat([("Is there a red circle?", "Yes"), ("How many?", "3")]), render_plain("a blue star")):
        ids, labels = tok.encode_segments(segments, num_image_tokens=4)
        assert ids == tok.encode_prompt(to_text(segments), num_image_tokens=4)
        assert len(labels) == len(ids)


def test_supervised_tokens_decode_to_answers_and_eos():
    tok = small_tokenizer()
    ids, labels = tok.encode_segments(render_chat([("Q one?", "red circle"), ("Q two?", "3")]), num_image_tokens=4)
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(supervised, skip_special_tokens=False) == " red circle<|endoftext|> 3<|endoftext|>"
    for token, label in zip(ids, labels):
        if token == tok.image_token_id:
            assert label == IGNORE_INDEX


def test_stream_decoder_reassembles_multibyte_characters():
    tok = small_tokenizer()
    text = "Größe: 三角形 ✓"
    ids = tok.encode(text)
    assert "".join(iter_text(tok, ids)) == text
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)
