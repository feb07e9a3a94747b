"""The PNG chart of a report (matplotlib, Agg backend: no display needed).

Left: one query's time by stage (preprocess, vision, prefill, decode) per backend, stacked. Right: decode speed
per backend next to its roofline bound. The title carries the random-weights label when it applies.
"""

from __future__ import annotations

import io
from pathlib import Path

from edge_vlm.deps import require
from edge_vlm.fileio import atomic_write, png_text

SOFTWARE = "edge-vlm bench"  # the PNG's Software text chunk: how a rerun knows the chart is ours to replace


def is_plot(path: Path) -> bool:
    """A chart `--plot` wrote earlier: its PNG says so in its Software text chunk, or (charts written before that
    chunk was set: matplotlib's own Software) in the title we always put there."""
    text = png_text(path)
    software, title = text.get("Software", ""), text.get("Title", "")
    return software == SOFTWARE or (software.startswith("Matplotlib") and "edge-vlm bench on " in title)


def write_plot(report: dict, path: str | Path) -> Path:
    """Draw the chart and write it atomically to `path`."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [b for b in report["backends"] if b.get("status") == "ok"]
    names = [b["name"] for b in ok]
    figure, (stages_ax, decode_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    bottom = [0.0] * len(ok)
    for key, label in (("preprocess_ms", "preprocess"), ("vision_ms", "vision+projector"),
                       ("prefill_ms", "prefill"), ("decode_ms", "decode")):
        seconds = [b["stages"][key]["median"] / 1e3 for b in ok]
        stages_ax.bar(names, seconds, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, seconds)]
    stages_ax.set_ylabel("seconds per query (median)")
    stages_ax.set_title(f"one query: {report['settings']['prompt_tokens']}-token prompt + "
                        f"{report['settings']['new_tokens']} tokens")
    stages_ax.legend(fontsize=8)
    positions = range(len(ok))
    measured = [b["decode"]["tokens_per_s"] for b in ok]
    bounds = [b["roofline"].get("bound_tokens_per_s") or 0.0 for b in ok]
    decode_ax.bar([p - 0.2 for p in positions], measured, width=0.4, label="measured")
    decode_ax.bar([p + 0.2 for p in positions], bounds, width=0.4, label="bandwidth bound", alpha=0.5)
    for p, b in zip(positions, ok):
        pct = b["roofline"].get("percent_of_bound")
        if pct is not None:
            decode_ax.annotate(f"{pct:.0f}%", (p - 0.2, b["decode"]["tokens_per_s"]), ha="center", va="bottom",
                               fontsize=8)
    decode_ax.set_xticks(list(positions), names)
    decode_ax.set_ylabel("decode tokens/s")
    decode_ax.set_title("decode vs memory-bandwidth roofline")
    decode_ax.legend(fontsize=8)
    for axis in (stages_ax, decode_ax):
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    cpu = report["machine"]["cpu"]["model"]
    gpus = report["machine"]["gpus"]
    where = gpus[0]["name"] if report["settings"]["device"] == "cuda" and gpus else cpu
    title = f"edge-vlm bench on {where}"
    if report["random_weights"]:
        title = f"RANDOM WEIGHTS — {title} (speed only)"
    figure.suptitle(title, fontsize=11, color="darkred" if report["random_weights"] else "black")
    figure.tight_layout()
    # the title goes into the PNG text chunk too, so tools (and tests) can read the random-weights label
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110, metadata={"Title": title, "Software": SOFTWARE})
    plt.close(figure)
    return atomic_write(path, png.getvalue(), "chart")
