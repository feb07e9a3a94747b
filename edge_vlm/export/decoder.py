"""The Phi decoder -> ONNX through onnxruntime-genai's model builder, plus the token-embedding table.

The builder knows Phi, not LLaVA, so the decoder is first written as a plain `PhiForCausalLM` directory (the LLaVA
model's `language_model` and `lm_head`, shared tensors, no copy) that transformers itself serialises, so the key
names are right by construction. The builder runs in a subprocess: its memory is returned to the system when it
exits (it loads the whole decoder), its chatty output goes to a log file, and Ctrl-C stops it with the export.

Options always passed: `exclude_embeds=true` (the graph takes `inputs_embeds`, so image features can be spliced in)
and `prune_lm_head=true` (logits of the last position only; see edge_vlm.runtime.decoder).
The lm_head's bias (Phi-2 has one) is checked in the produced graph against the checkpoint's values.

Embedding table: a `.npy` file, memory-mapped by the runtime. Chosen over a one-node ONNX Gather model because the
runtime needs the rows on the host anyway (it splices image features in between them), np.load(mmap_mode='r') reads
only the rows a prompt touches, and it needs no session, no provider and no copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_vlm.errors import EdgeVLMError

BUILDER_MODULE = "onnxruntime_genai.models.builder"
# Another module run as `python -m MODULE` with the builder's arguments (a patched or newer builder, or a test's stand-in).
BUILDER_MODULE_ENV = "EDGE_VLM_GENAI_BUILDER"
BUILDER_OPTIONS = ("exclude_embeds=true", "prune_lm_head=true")
LM_HEAD_ADD = "/lm_head/Add"


def decoder_shape(text_config) -> dict:
    """head size, rotary dim and the rest the runtime needs, from a PhiConfig."""
    head = text_config.hidden_size // text_config.num_attention_heads
    factor = _partial_rotary_factor(text_config)
    return {
        "hidden_size": text_config.hidden_size,
        "num_layers": text_config.num_hidden_layers,
        "num_attention_heads": text_config.num_attention_heads,
        "num_kv_heads": text_config.num_key_value_heads or text_config.num_attention_heads,
        "head_size": head,
        "rotary_dim": int(head * factor),
        "vocab_size": text_config.vocab_size,
        "context_length": text_config.max_position_embeddings,
    }


def check_builder_compatible(text_config) -> None:
    """Fail early, with the fix, for shapes ONNX Runtime's GroupQueryAttention (the builder's attention) rejects:
    head size a multiple of 16 (CPU kernel) and rotary dim / 2 a multiple of 8 (rotary kernel). Phi-2: 80 and 32."""
    shape = decoder_shape(text_config)
    problems = []
    if shape["head_size"] % 16:
        problems.append(f"head size {shape['head_size']} is not a multiple of 16")
    if (shape["rotary_dim"] // 2) % 8:
        problems.append(f"rotary dim {shape['rotary_dim']} (head size x partial_rotary_factor) is not a multiple of 16")
    if problems:
        raise EdgeVLMError(
            "this decoder cannot be exported with ONNX Runtime's GroupQueryAttention: " + "; ".join(problems)
            + ". Use a model whose head size is a multiple of 16 with a rotary dim that is a multiple of 16 "
            "(e.g. head size 80 with partial_rotary_factor 0.4, as Phi-2)"
        )


def _partial_rotary_factor(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None) or {}
    return float(rope.get("partial_rotary_factor", getattr(text_config, "partial_rotary_factor", 1.0)))


def write_phi_dir(model, checkpoint_dir: Path, out_dir: Path) -> Path:
    """Save the LLaVA model's decoder as a PhiForCausalLM directory (safetensors shards + config + tokenizer)."""
    import copy

    import torch
    from transformers import PhiForCausalLM

    config = copy.deepcopy(model.config.text_config)
    config.architectures = ["PhiForCausalLM"]
    config.tie_word_embeddings = False
    # The builder reads `config.partial_rotary_factor` and `config.rope_theta` as plain attributes. transformers 5.x
    # keeps them in rope_parameters, and some 5.x releases (5.17) leave the attribute at PhiConfig's default 0.5: the
    # builder then makes a 40-wide rotary cache for Phi-2 and ONNX Runtime rejects the graph. Write them explicitly.
    rope = getattr(config, "rope_parameters", None) or {}
    config.partial_rotary_factor = _partial_rotary_factor(config)
    config.rope_theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    with torch.device("meta"):
        phi = PhiForCausalLM(config)
    phi.model = model.model.language_model  # the very same modules: nothing is copied
    phi.lm_head = model.lm_head
    if phi.lm_head.bias is None:
        raise EdgeVLMError("internal: the model's lm_head has no bias; load it with LlavaPhiForConditionalGeneration")
    stray = [name for name, tensor in phi.state_dict().items() if tensor.is_meta]
    if stray:
        raise EdgeVLMError(f"internal: decoder tensors were not taken from the checkpoint: {stray[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    phi.save_pretrained(out_dir, safe_serialization=True, max_shard_size="2GB")
    _check_rope_written(out_dir / "config.json", config.partial_rotary_factor)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(checkpoint_dir / name, out_dir / name)
    return out_dir


def _check_rope_written(config_file: Path, factor: float) -> None:
    """The written config.json must carry the rotary factor at its top level, where the builder looks."""
    import json

    written = json.loads(config_file.read_text()).get("partial_rotary_factor")
    if written is None or abs(float(written) - factor) > 1e-6:
        raise EdgeVLMError(f"{config_file} carries partial_rotary_factor {written}, not {factor}: this transformers "
                           "version drops it, and the decoder would be built with the wrong rotary dim")


def save_embeddings(model, path: Path, dtype: str = "float32") -> dict:
    """The token-embedding table as .npy ([vocab, hidden], `dtype`)."""
    table = model.model.language_model.embed_tokens.weight.detach().float().cpu().numpy().astype(dtype, copy=False)
    np.save(path, table, allow_pickle=False)
    return {"shape": list(table.shape), "dtype": str(table.dtype)}


def run_builder(phi_dir: Path, out_dir: Path, precision: str, execution_provider: str, log_path: Path) -> Path:
    """Run onnxruntime-genai's builder in a subprocess; returns the path of the written model.onnx."""
    from edge_vlm.deps import require

    module = os.environ.get(BUILDER_MODULE_ENV) or BUILDER_MODULE
    if module == BUILDER_MODULE:
        require("onnxruntime_genai")
    cache_dir = out_dir.parent / (out_dir.name + ".cache")
    command = [
        sys.executable, "-m", module, "-i", str(phi_dir), "-o", str(out_dir), "-p", precision,
        "-e", execution_provider, "-c", str(cache_dir), "--extra_options", *BUILDER_OPTIONS,
    ]
    # no model hub here; the builder's tqdm bars would fill the log with carriage returns
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = process.wait()
        except BaseException:  # Ctrl-C, SIGTERM or an error in this process: do not leave the builder running
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    shutil.rmtree(cache_dir, ignore_errors=True)
    model_path = out_dir / "model.onnx"
    if code != 0 or not model_path.is_file():
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise EdgeVLMError(f"onnxruntime-genai's model builder failed (exit {code}); last lines of {log_path}:\n{tail}")
    return model_path


def check_lm_head_bias(onnx_path: Path, expected: np.ndarray) -> None:
    """The builder must have carried the lm_head bias: find `/lm_head/Add` and compare its constant to `expected`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    adds = [node for node in model.graph.node if node.name == LM_HEAD_ADD]
    if not adds:
        raise EdgeVLMError(f"the built decoder {onnx_path} has no {LM_HEAD_ADD}: the builder dropped the lm_head bias")
    initializers = {init.name: init for init in model.graph.initializer}
    bias_inputs = [name for name in adds[0].input if name in initializers]
    if len(bias_inputs) != 1:
        raise EdgeVLMError(f"internal: {LM_HEAD_ADD} in {onnx_path} has no constant bias input")
    bias = numpy_helper.to_array(initializers[bias_inputs[0]], base_dir=str(onnx_path.parent))
    expected = np.asarray(expected, dtype=np.float32).reshape(-1)
    if bias.size != expected.size or not np.allclose(bias.astype(np.float32).reshape(-1), expected,
                                                     rtol=1e-3, atol=1e-3):
        raise EdgeVLMError(f"the lm_head bias in {onnx_path} differs from the checkpoint's: the decoder is wrong")
