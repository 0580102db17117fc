"""The training-curves figure of a run (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import atomic_write


def plot_training_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Loss terms and validation Dice against step (top), learning rate (bottom) -> PNG, atomically.

    With alignment on, the total loss is L_main + lambda * L_align with L_align = mean(-cos) in [-1, 1]: it goes
    negative once the aligned features agree with the teacher's, which the figure says in its title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.5), dpi=100, sharex=True, height_ratios=(3, 1))
    for key, style in (("loss", "-"), ("loss_main", "--"), ("loss_align", ":")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), style, label=key)
    ax.set_ylabel("training loss")
    losses = [h["loss"] for h in history if "loss" in h]
    if losses and min(losses) > 0:  # the alignment term is negative when on: then a linear axis
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    val = [(h["step"], h["val_dice"]) for h in history if "val_dice" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="tab:red", label="val Dice")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="center right", fontsize=8)
    aligned = any("loss_align" in h for h in history)
    ax.set_title("leafseg training" + ("\nloss = L1 + lambda * mean(-cos): negative once features align" if aligned
                                       else ""), fontsize=10)
    lr = [(h["step"], h["lr"]) for h in history if "lr" in h]
    if lr:
        ax_lr.plot(*zip(*lr), color="tab:gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
