"""The validation gate: the bundle and PyTorch side by side on validation samples, figures against thresholds.

PyTorch side (run first, while the checkpoint is loaded): image features, the greedy answer (transformers'
`generate`) and the raw logits that chose each of its tokens. Bundle side (ONNX Runtime,
through BundleEngine's own pieces): image features, the logits at the same positions fed through the KV cache one
token at a time (so the cache path is what is checked), and its own greedy answer.

Figures: vision-feature cosine (min over samples) and max-abs error (also relative to the largest reference value);
logit cosine (mean and min over positions, logits centred first: a shared offset would otherwise make any two logit
vectors look alike); top-1 agreement over positions; greedy-answer exact match; answer accuracy of both sides
against the samples' reference answers, where they have one.

With an image-token selection (K of N image tokens), PyTorch runs with the same selection, so the figures above
measure the export alone; PyTorch's accuracy with all N tokens is added, and the selection's own cost
(`token_accuracy_drop`, all-token accuracy minus K-token accuracy) has its own limit.

Default thresholds are set for a trained model (random weights have nearly tied logits, so quantized random models
fail the answer-level checks by design; docs/stack.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge_vlm.errors import EdgeVLMError
from edge_vlm.export.samples import ExportSample, normalize_answer


@dataclass
class Thresholds:
    vision_cosine_min: float
    vision_rel_error_max: float
    logit_cosine_min: float
    top1_agreement_min: float
    exact_match_min: float
    accuracy_drop_max: float
    # an image-token selection (K < N): PyTorch's accuracy with K tokens against PyTorch's with all N, the cost of
    # the selection alone (the checks above compare the bundle with PyTorch at the same K)
    token_accuracy_drop_max: float = 0.01
    # an image-token selection: the share of pictures whose kept tokens are the ones PyTorch kept. Near-tied patches
    # can be chosen differently by a graph that computes in float16 (measured on the built-in model at K = 18: 15
    # pictures of 200); such pictures are left out of the vision figures above and counted here instead, and their
    # effect on the answers is in the logit and answer checks.
    selection_agreement_min: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


VISION_THRESHOLDS = {"fp32": (0.99999, 1e-3), "fp16": (0.999, 2e-2)}
SELECTION_AGREEMENT = {"fp32": 0.95, "fp16": 0.8}  # fp32 graphs flip a near-tie rarely, fp16 ones more often
# a token whose features point elsewhere than PyTorch's token at its place (cosine below this) is another patch
_SAME_TOKEN_COSINE = 0.99
DECODER_THRESHOLDS = {  # logit cosine, top-1 agreement, exact match, accuracy drop (absolute)
    "fp32": (0.9999, 0.99, 0.95, 0.0),
    "fp16": (0.999, 0.97, 0.90, 0.01),
    "int8": (0.995, 0.95, 0.85, 0.02),
    "int4": (0.97, 0.85, 0.60, 0.05),
}


def default_thresholds(vision_precision: str, decoder_precision: str) -> Thresholds:
    vision_cos, vision_rel = VISION_THRESHOLDS[vision_precision]
    logit_cos, top1, exact, drop = DECODER_THRESHOLDS[decoder_precision]
    return Thresholds(vision_cos, vision_rel, logit_cos, top1, exact, drop,
                      selection_agreement_min=SELECTION_AGREEMENT[vision_precision])


@dataclass
class Reference:
    """PyTorch's view of one sample."""

    prompt_ids: list[int]
    features: np.ndarray | None  # [N, D]
    answer_ids: list[int]  # greedy, EOS included when generated
    logits: np.ndarray  # [len(answer_ids), V]: the logits that predicted each answer token
    answer_text: str


@dataclass
class GateResult:
    figures: dict
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"passed": self.passed, "figures": self.figures, "thresholds": self.thresholds.to_dict(),
                "failures": self.failures}


def torch_references(model, tokenizer, image_config, samples: list[ExportSample], max_new_tokens: int,
                     progress=None, desc: str = "PyTorch reference") -> list[Reference]:
    """Run the PyTorch model on the samples (greedy answers and teacher-forced logits), with the model's image-token
    selection if it has one."""
    import torch

    from edge_vlm.imaging import preprocess
    from edge_vlm.prompting import inference_prompt

    embed = model.get_input_embeddings()
    eos = tokenizer.eos_token_id
    references = []
    for sample in progress(samples, desc=desc, unit="sample") if progress else samples:
        prompt = inference_prompt(sample.question, None, has_image=sample.image is not None)
        ids = tokenizer.encode_prompt(prompt, model.num_image_tokens)
        with torch.no_grad():
            embeds = embed(torch.tensor([ids]))
            features = None
            if sample.image is not None:
                pixels = torch.from_numpy(preprocess(sample.image, image_config))[None]
                features = model.image_features(pixels)[0]
                mask = (torch.tensor(ids) == tokenizer.image_token_id)
                embeds[0, mask] = features.to(embeds.dtype)
            # output_logits: the raw logits that chose each answer token (the teacher-forced logits of that answer)
            out = model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                eos_token_id=eos, pad_token_id=eos, output_logits=True, return_dict_in_generate=True,
            )
            answer = out.sequences[0].tolist()
            logits = torch.cat(out.logits, dim=0).float().numpy()
            if logits.shape[0] != len(answer):
                raise EdgeVLMError("internal: generate returned logits for a different number of tokens")
        text = tokenizer.decode([t for t in answer if t != eos])
        references.append(Reference(ids, None if features is None else features.float().numpy(), answer,
                                    logits, text))
    return references


def bundle_figures(engine, samples: list[ExportSample], references: list[Reference], max_new_tokens: int,
                   progress=None, all_token_answers: list[str] | None = None) -> dict:
    """Run the bundle (a BundleEngine) on the same samples and compare with `references`. `all_token_answers`:
    PyTorch's answers with every image token, when the bundle (and `references`) use a token selection."""
    from edge_vlm.engine import GenerationConfig
    from edge_vlm.imaging import preprocess

    greedy = GenerationConfig(max_new_tokens=max_new_tokens)
    selecting = getattr(engine, "token_selection", None) is not None
    vision_cos, vision_err, vision_scale, agreed, pictures = [], 0.0, 0.0, 0, 0
    logit_cos, top1, exact, correct_bundle, correct_torch, graded = [], [], [], 0, 0, 0
    pairs = list(zip(samples, references))
    for sample, ref in progress(pairs, desc="bundle check", unit="sample") if progress else pairs:
        features = None
        if sample.image is not None:
            features = engine.image_features(preprocess(sample.image, engine.image_config)[None])[0]
            pictures += 1
            if not selecting or _same_tokens(features, ref.features):
                agreed += 1
                vision_cos.append(_cosine(features, ref.features))
                vision_err = max(vision_err, float(np.max(np.abs(features - ref.features))))
                vision_scale = max(vision_scale, float(np.max(np.abs(ref.features))))
        first_logits, prefix = engine.prefill(ref.prompt_ids, features)
        logits, cache = first_logits, prefix
        for position, token in enumerate(ref.answer_ids):
            logit_cos.append(_cosine(_centred(logits), _centred(ref.logits[position])))
            top1.append(int(np.argmax(logits)) == int(np.argmax(ref.logits[position])))
            if position + 1 < len(ref.answer_ids):
                logits, cache = engine.step(token, cache)
        answer = engine.tokenizer.decode(list(engine.decode(first_logits, prefix, max_new_tokens, greedy)))
        exact.append(answer.strip() == ref.answer_text.strip())
        if sample.answer is not None:
            graded += 1
            correct_bundle += normalize_answer(answer) == normalize_answer(sample.answer)
            correct_torch += normalize_answer(ref.answer_text) == normalize_answer(sample.answer)
    figures = {
        "samples": len(pairs),
        "positions": len(top1),
        "vision_cosine_min": min(vision_cos) if vision_cos else None,
        "vision_max_abs_error": vision_err if vision_cos else None,
        "vision_rel_error": (vision_err / vision_scale if vision_scale else 0.0) if vision_cos else None,
        "logit_cosine_mean": float(np.mean(logit_cos)),
        "logit_cosine_min": float(np.min(logit_cos)),
        "top1_agreement": float(np.mean(top1)),
        "exact_match": float(np.mean(exact)),
        "accuracy_bundle": correct_bundle / graded if graded else None,
        "accuracy_torch": correct_torch / graded if graded else None,
        "graded_samples": graded,
    }
    if all_token_answers is not None:
        figures["accuracy_all_tokens"] = _accuracy(all_token_answers, samples)
    if selecting and pictures:
        figures["selection_agreement"] = agreed / pictures
    return figures


def _same_tokens(features: np.ndarray, reference: np.ndarray) -> bool:
    """Every token [K, D] points where PyTorch's token at its place does: the same patches were kept."""
    a, b = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosines = np.where(norms > 0, (a * b).sum(-1) / np.where(norms > 0, norms, 1), 1.0)
    return bool(np.all(cosines >= _SAME_TOKEN_COSINE))


def _accuracy(answers: list[str], samples: list[ExportSample]) -> float | None:
    graded = [(answer, sample.answer) for answer, sample in zip(answers, samples) if sample.answer is not None]
    if not graded:
        return None
    return sum(normalize_answer(a) == normalize_answer(b) for a, b in graded) / len(graded)


def judge(figures: dict, thresholds: Thresholds) -> GateResult:
    """Compare figures with thresholds; every failed check is listed with its value and limit."""
    checks = [
        ("vision_cosine_min", ">=", thresholds.vision_cosine_min),
        ("vision_rel_error", "<=", thresholds.vision_rel_error_max),
        ("logit_cosine_mean", ">=", thresholds.logit_cosine_min),
        ("top1_agreement", ">=", thresholds.top1_agreement_min),
        ("exact_match", ">=", thresholds.exact_match_min),
        ("selection_agreement", ">=", thresholds.selection_agreement_min),
    ]
    failures = []
    for name, op, limit in checks:
        value = figures.get(name)
        if value is None:
            continue
        if (op == ">=" and value < limit) or (op == "<=" and value > limit):
            failures.append(f"{name} {value:.6g} (needs {op} {limit:g})")
    if figures.get("accuracy_bundle") is not None:
        drop = figures["accuracy_torch"] - figures["accuracy_bundle"]
        figures["accuracy_drop"] = drop
        if drop > thresholds.accuracy_drop_max + 1e-12:
            failures.append(f"accuracy_drop {drop:.4g} (needs <= {thresholds.accuracy_drop_max:g})")
    if "accuracy_all_tokens" in figures:  # a token selection: what it costs PyTorch's own answers
        limit = thresholds.token_accuracy_drop_max
        if figures["accuracy_all_tokens"] is None or figures.get("accuracy_torch") is None:
            if limit < 1:
                failures.append("token_accuracy_drop unknown: no validation sample has a reference answer (give "
                                "--val DATA with answers, or accept any loss with --max-token-accuracy-drop 1)")
        else:
            drop = figures["accuracy_all_tokens"] - figures["accuracy_torch"]
            figures["token_accuracy_drop"] = drop
            if drop > limit + 1e-12:
                failures.append(f"token_accuracy_drop {drop:.4g} (needs <= {limit:g}: fewer image tokens cost "
                                "more answers than allowed; --max-token-accuracy-drop loosens it)")
    return GateResult(figures, thresholds, failures)


def format_figures(result: GateResult) -> str:
    """A small table of the figures, for the console and the refusal message."""
    lines = []
    for name, value in result.figures.items():
        if value is None:
            continue
        lines.append(f"    {name:22s} {value:.6g}" if isinstance(value, float) else f"    {name:22s} {value}")
    verdict = "PASSED" if result.passed else "FAILED: " + "; ".join(result.failures)
    return "\n".join([*lines, f"    gate: {verdict}"])


class GateFailed(EdgeVLMError):
    """The bundle lost more accuracy than its precision's gate allows."""


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def _centred(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64).reshape(-1)
    return logits - logits.mean()
