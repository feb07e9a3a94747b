"""Rendering a report: the terminal table, the markdown file, the compact one-line JSON. Torch-free."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

# (label, getter, format string or function): one row per metric, one column per backend; a getter returns None
# where the metric does not apply
Row = tuple[str, Callable[[dict], float | None], "str | Callable[[float], str]"]


def _get(*keys):
    def getter(result: dict):
        value = result
        for key in keys:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        return value
    return getter


def human_bytes(value: float) -> str:
    """Decimal units (GB = 10^9 B), as bandwidth figures are quoted."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def _image_tokens(result: dict):
    """'36' (every patch token) or '18 of 36': a reduced setting is another model (edge_vlm.image_tokens)."""
    tokens = (result.get("info") or {}).get("image_tokens") or {}
    if not isinstance(tokens.get("tokens"), int):
        return None  # a report written before the setting was recorded
    reduced = tokens.get("patch_tokens") not in (None, tokens["tokens"])
    return f"{tokens['tokens']} of {tokens['patch_tokens']}" if reduced else str(tokens["tokens"])


def _artifact_bytes(result: dict):
    artifacts = (result.get("info") or {}).get("artifacts") or {}
    return artifacts.get("total_bytes") or artifacts.get("parameters_bytes")


ROWS: list[Row] = [
    ("image tokens", _image_tokens, "{}"),
    ("load (s)", _get("load_s"), "{:.1f}"),
    ("artifacts (disk or in-memory weights)", _artifact_bytes, human_bytes),
    ("peak RSS", _get("memory", "peak_rss_bytes"), human_bytes),
    ("peak GPU memory", _get("memory", "peak_gpu_bytes"), human_bytes),
    ("preprocess (ms)", _get("stages", "preprocess_ms", "median"), "{:.1f}"),
    ("vision+projector (ms)", _get("stages", "vision_ms", "median"), "{:.1f}"),
    ("prefill (ms)", _get("stages", "prefill_ms", "median"), "{:.1f}"),
    ("prefill (tok/s)", _get("prefill_tokens_per_s", "median"), "{:.1f}"),
    ("TTFT incl. image (ms)", _get("stages", "ttft_ms", "median"), "{:.1f}"),
    ("decode p50 (ms/tok)", _get("decode", "ms_per_token", "p50"), "{:.1f}"),
    ("decode p90 (ms/tok)", _get("decode", "ms_per_token", "p90"), "{:.1f}"),
    ("decode p99 (ms/tok)", _get("decode", "ms_per_token", "p99"), "{:.1f}"),
    ("decode (tok/s)", _get("decode", "tokens_per_s"), "{:.2f}"),
    ("bytes read per token", _get("roofline", "bytes_per_token", "total"), human_bytes),
    ("roofline bound (tok/s)", _get("roofline", "bound_tokens_per_s"), "{:.2f}"),
    ("decode % of bound", _get("roofline", "percent_of_bound"), "{:.0f}%"),
    ("nominal bound (tok/s)", _get("roofline", "nominal_bound_tokens_per_s"), "{:.1f}"),
    ("energy (J/token)", _get("energy", "joules_per_token"), "{:.3f}"),
    ("end-to-end query (s)", lambda r: None if _get("stages", "e2e_ms", "median")(r) is None
     else _get("stages", "e2e_ms", "median")(r) / 1e3, "{:.2f}"),
]


def _cell(result: dict, getter, fmt: str) -> str:
    if result.get("status") != "ok":
        return "error"
    value = getter(result)
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else fmt.format(value)


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the metric table; rows that are empty for every backend are dropped."""
    backends = report["backends"]
    header = ["metric"] + [b["name"] for b in backends]
    rows = []
    for label, getter, fmt in ROWS:
        cells = [_cell(b, getter, fmt) for b in backends]
        if all(c in ("-", "error") for c in cells) and label.startswith(("peak GPU", "nominal", "energy", "image tokens")):
            continue
        rows.append([label] + cells)
    return header, rows


def _header_lines(report: dict) -> list[str]:
    s, m = report["settings"], report["machine"]
    cpu = m["cpu"]
    bandwidth = report["bandwidth"]
    lines = []
    if report["random_weights"]:
        lines.append(f"*** {report['label']} ***")
    lines.append(f"workload: image prompt of {s['prompt_tokens']} tokens, then {s['new_tokens']} decode steps (EOS "
                 f"ignored); medians of {s['runs']} runs after {s['warmup']} warm-up; threads "
                 f"{s['threads'] or 'default'}; device {s['device']}")
    flags = "AVX-512" if cpu["avx512"] else "no AVX-512"
    lines.append(f"machine: {cpu['model']} ({cpu['usable_cpus']} CPUs, {flags}; {', '.join(cpu['simd_flags'])}), "
                 f"{m['memory']['total_bytes'] / 2**30:.0f} GiB"
                 + (f"; GPU {', '.join(g['name'] for g in m['gpus'])}" if m["gpus"] else "")
                 + (f"; {m['jetson']}" if m.get("jetson") else ""))
    for device, bw in bandwidth.items():
        measured = bw.get("used_gb_s")
        text = f"bandwidth ({device}): {measured:.1f} GB/s used for the roofline" if measured else \
            f"bandwidth ({device}): unknown"
        if bw.get("nominal_gb_s"):
            text += f"; nominal {bw['nominal_gb_s']:.0f} GB/s ({bw.get('nominal_entry')})"
        if bw.get("method"):
            text += f" [{bw['method']}]"
        lines.append(text)
    load = report["load_average"]
    lines.append(f"load average (1/5/15 min): before {load['before']}, after {load['after']}")
    return lines


def _footer_lines(report: dict) -> list[str]:
    lines = []
    for b in report["backends"]:
        if b.get("status") != "ok":
            lines.append(f"{b['name']}: ERROR {b.get('error')}")
            continue
        tokens = (b.get("info") or {}).get("image_tokens") or {}
        if tokens.get("selection"):
            lines.append(f"{b['name']}: image tokens {tokens.get('summary')}: answers can differ from the full model's")
        energy = b["energy"]
        if not energy.get("available"):
            lines.append(f"{b['name']}: energy {energy.get('reason', 'unavailable')}")
        elif energy.get("covers"):
            lines.append(f"{b['name']}: energy from {energy['source']} ({energy['covers']})")
        if b.get("profile"):
            from edge_vlm.bench.profile import render_profile

            lines += render_profile(b["name"], b["profile"]) if "sessions" in b["profile"] else \
                [f"{b['name']}: profiling failed: {b['profile'].get('error')}"]
    return lines


def render_table(report: dict) -> str:
    """The human-readable table with a header that says what was measured where."""
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
    lines = _header_lines(report) + ["", fmt_row(header), "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in rows]
    footer = _footer_lines(report)
    return "\n".join(lines + ([""] + footer if footer else []))


MARKDOWN_TITLES = ("# edge-vlm bench", "# edge-vlm bench — RANDOM WEIGHTS")


def render_markdown(report: dict) -> str:
    """A markdown page: label, command, machine, versions, the table, notes. Its first line is one of
    MARKDOWN_TITLES, which is how a rerun knows the page is ours to replace (is_report_markdown)."""
    header, rows = table_rows(report)
    title = MARKDOWN_TITLES[1] if report["random_weights"] else MARKDOWN_TITLES[0]
    lines = [title, ""]
    if report["random_weights"]:
        lines += [f"> **{report['label']}.** Speed and memory depend on the shapes, not on the weights' values, so "
                  "they hold for a trained model of the same shapes; no answer quality is implied.", ""]
    lines += ["Command:", "", "```", report["command"], "```", ""]
    lines += [f"- {line}" for line in _header_lines(report) if not line.startswith("***")]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += [f"- versions: {versions}", f"- created: {report['created']}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    footer = _footer_lines(report)
    if footer:
        lines += [""] + [f"- {line}" for line in footer]
    for b in report["backends"]:
        if b.get("status") == "ok":
            bpt = b["roofline"]["bytes_per_token"]
            lines.append(
                f"- {b['name']} bytes read per token at mean context {bpt['context']:.0f}: matmul weights "
                f"{human_bytes(bpt['matmul_weights'])} + lm_head {human_bytes(bpt['lm_head'])} + KV cache "
                f"{human_bytes(bpt['kv_cache'])} + biases/norms/embedding row "
                f"{human_bytes(bpt['vectors'] + bpt['embedding_row'])} ({bpt['source']})")
    return "\n".join(lines) + "\n"


def is_report_json(path: Path) -> bool:
    """A report `--json` wrote earlier: a JSON object carrying the bench schema id."""
    from edge_vlm.bench.schema import SCHEMA_ID
    from edge_vlm.fileio import json_object

    report = json_object(path)
    return report is not None and report.get("schema") == SCHEMA_ID


def is_report_markdown(path: Path) -> bool:
    """A page `--markdown` wrote earlier: its title line, then the recorded command."""
    from edge_vlm.fileio import read_head

    lines = read_head(path, 4096).decode("utf-8", errors="replace").splitlines()
    return bool(lines) and lines[0] in MARKDOWN_TITLES and "Command:" in lines[1:8]


def compact(report: dict) -> dict:
    """The report without the per-step samples (still valid against the schema): the closing stdout line."""
    small = copy.deepcopy(report)
    for backend in small["backends"]:
        if isinstance(backend.get("decode"), dict):
            backend["decode"].pop("samples_ms", None)
        backend.pop("traceback", None)
    return small


def closing_line(report: dict) -> str:
    return json.dumps(compact(report), separators=(",", ":"), sort_keys=False)
