"""Decode speed at a long past with the KV cache copied every step (the old runtime) vs past/present buffer sharing.

Both decoders are sessions of the same bundle in one process, measured in alternation (old, new, old, new, ...) at
the same past length, so machine noise hits both alike. Each run: prefill `--past` positions (random embeddings, the
same for both, once per decoder), then `--steps` single-token steps from that past; the figure is tokens/s over the
steps; medians over `--runs`.

    # 1. a random checkpoint with Phi-2's decoder layer shapes (hidden 2560, 32 heads of 80, context 2048), few
    #    layers, a small vocabulary and the tiny vision tower, exported to INT4 (about 5 minutes on 2 cores)
    python benchmarks/kv_share_buffer.py build --out /tmp/kvbench --layers 4
    # 2. the comparison
    python benchmarks/kv_share_buffer.py measure --bundle /tmp/kvbench/bundle-int4 --past 1500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(out: Path, layers: int, precision: str) -> None:
    """A random checkpoint (Phi-2 decoder layers, tiny vision, 1024-token vocabulary) and its bundle."""
    from edge_vlm.model.checkpoint import CheckpointMeta, save_checkpoint
    from edge_vlm.model.factory import random_model, small_tokenizer
    from edge_vlm.model.presets import LLAVA_PHI_2, TINY

    checkpoint = out / "checkpoint"
    if not (checkpoint / "edge_vlm.json").exists():
        tokenizer = small_tokenizer()
        preset = {"vision": TINY["vision"], "text": {**LLAVA_PHI_2["text"], "num_hidden_layers": layers,
                                                          "bos_token_id": 0, "eos_token_id": 0},
                  "image_token_id": None}
        model = random_model(preset, tokenizer, seed=0, weight_std=0.02, vocab_size=len(tokenizer))
        meta = CheckpointMeta(random_weights=True,
                              source=f"benchmarks/kv_share_buffer.py: Phi-2 text shapes x {layers} layers, seed 0")
        save_checkpoint(model, tokenizer, checkpoint, meta)
    bundle = out / f"bundle-{precision}"
    subprocess.run([sys.executable, "-m", "edge_vlm.cli.main", "export", "--model", str(checkpoint), "--out",
                    str(bundle), "--precision", precision, "--val-samples", "2", "--val-max-new-tokens", "4",
                    "--allow-degraded", "--force"], check=True)
    print(bundle)


def measure(bundle: str, past: int, steps: int, runs: int, threads: int | None) -> dict:
    import numpy as np

    from edge_vlm.runtime import BundleEngine
    from edge_vlm.runtime import providers as eps
    from edge_vlm.runtime.decoder import Decoder

    engine = BundleEngine.from_bundle(bundle, providers=["cpu"], threads=threads, verify="size")
    new = engine.decoder
    old = Decoder(engine.bundle.file("decoder"), new.providers, eps.session_options(threads), new.head_size,
                  new.context_length, share_buffer=False)
    rng = np.random.default_rng(0)
    prompt = rng.normal(size=(1, past, new.hidden_size)).astype(np.float32) * 0.02
    tokens = rng.normal(size=(steps, 1, 1, new.hidden_size)).astype(np.float32) * 0.02
    # one prefill per decoder; every run decodes from that same past
    prefilled = {name: decoder.forward(prompt, decoder.empty_cache(), reserve=past + steps)[1]
                 for name, decoder in (("copy", old), ("share", new))}
    samples: dict[str, list[float]] = {"copy": [], "share": []}
    for run in range(runs + 1):  # run 0 warms both sessions up and is not counted
        for name, decoder in (("copy", old), ("share", new)):
            cache = prefilled[name]
            if cache.buffers is not None:
                # rewind: the previous run's positions after `past` become scratch again, so this run writes in place
                # like the first one did instead of branching into a copy
                cache.buffers.end = cache.length
            start = time.perf_counter()
            for token in tokens:
                logits, cache = decoder.forward(token, cache)
            elapsed = time.perf_counter() - start
            if run:
                samples[name].append(steps / elapsed)
        if run:
            print(f"run {run}: copy {samples['copy'][-1]:.2f} tok/s, share {samples['share'][-1]:.2f} tok/s",
                  flush=True)
    kv_bytes = len(new.past_names) * new.kv_heads * new.head_size * np.dtype(new.dtype).itemsize
    result = {
        "bundle": bundle, "past": past, "steps": steps, "runs": runs, "threads": threads,
        "kv_cache_mb_at_past": kv_bytes * past / 1e6,
        "copy_tokens_per_s": samples["copy"], "share_tokens_per_s": samples["share"],
        "copy_median": statistics.median(samples["copy"]), "share_median": statistics.median(samples["share"]),
    }
    result["speedup"] = result["share_median"] / result["copy_median"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("build", help="make the random checkpoint and export it")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--precision", default="int4", choices=["fp32", "int8", "int4"])
    m = verbs.add_parser("measure", help="old (copying) vs new (shared buffers) decode speed")
    m.add_argument("--bundle", required=True)
    m.add_argument("--past", type=int, default=1500, help="positions already in the cache when decoding starts")
    m.add_argument("--steps", type=int, default=32, help="decode steps per run")
    m.add_argument("--runs", type=int, default=5)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.verb == "build":
        build(args.out, args.layers, args.precision)
        return 0
    result = measure(args.bundle, args.past, args.steps, args.runs, args.threads)
    print(f"past {result['past']} ({result['kv_cache_mb_at_past']:.0f} MB of KV cache): copy "
          f"{result['copy_median']:.2f} tok/s, share {result['share_median']:.2f} tok/s, "
          f"x{result['speedup']:.2f} (medians of {result['runs']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
