"""A training run's human-readable record: log.csv, a loss-curve PNG and (when installed) TensorBoard events.

The history lives in the checkpoint, and these files are rewritten from it after each epoch, so a run resumed
after a kill never shows an epoch twice or a gap.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from tal.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


def write_csv(history: list[dict], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def plot_losses(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("final_loss", "cls_loss", "reg_loss"):
        if any(key in row for row in history):
            ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    evals = [(row["epoch"], row["eval_average_mAP"]) for row in history if row.get("eval_average_mAP") is not None]
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), color="black", linestyle="--", marker="s", label="eval average mAP")
        ax2.set_ylabel("average mAP")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if evals else "best")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class TensorBoard:
    """Scalars to TensorBoard when the package is installed; otherwise nothing."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.writer = None
        else:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def add(self, row: dict) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch" and v is not None:
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def write_run_record(history: list[dict], run_dir: Path, tb: TensorBoard | None = None) -> None:
    write_csv(history, run_dir / "log.csv")
    try:
        plot_losses(history, run_dir / "loss_curve.png", title=run_dir.name)
    except Exception as e:  # a plotting failure must never stop training
        log.warning("could not draw the loss curve: %s", e)
    if tb is not None and history:
        tb.add(history[-1])
