"""What a run leaves behind besides checkpoints: metrics.jsonl, optional TensorBoard events, loss.png."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from edge_vlm.fileio import atomic_write

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (a torn last line of a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def json_line(record: dict) -> str:
    """One strict-JSON line: a NaN or infinite number (a diverged step) is written as null, never as the bare `NaN`
    that Python's json writes by default and other JSON readers refuse."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """Appends one JSON line per logged step (flushed, so a killed run keeps what it logged). On resume, records
    after the resumed step are dropped first: those steps run again and are logged again."""

    def __init__(self, output_dir: str | Path, resume_step: int | None, tensorboard: bool = False):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            kept = [r for r in read_metrics(self.path) if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            atomic_write(self.path, "".join(json_line(r) for r in kept), "training metrics")
        self.handle = self.path.open("a")
        self.writer = None
        if tensorboard:
            from edge_vlm.deps import require

            require("tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        self.handle.write(json_line(record))
        self.handle.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def plot_loss(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """loss (and lr) per step as a PNG (matplotlib, Agg backend), written atomically. None if nothing was logged."""
    records = [r for r in read_metrics(metrics_path) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(steps, [r["loss"] for r in records], color="tab:blue", linewidth=1.2, label="loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss (per supervised token)", color="tab:blue")
    if any("lr" in r for r in records):
        lr_axis = loss_axis.twinx()
        lr_axis.plot(steps, [r.get("lr") if r.get("lr") is not None else float("nan") for r in records],
                     color="tab:orange", linewidth=0.8)
        lr_axis.set_ylabel("learning rate", color="tab:orange")
    loss_axis.set_title(title or "training loss")
    loss_axis.grid(alpha=0.3)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png")
    finally:
        plt.close(fig)
    return atomic_write(out_path, image.getvalue(), "loss plot")
