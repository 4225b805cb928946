"""The evaluation plot: mean quality against the share of strong calls."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from routers.evaluation.metrics import PairQuality, routing_curve
from routers.output_files import replaced_on_success

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from routers.evaluation.leave_one_out import LeaveOneOutTable


def save_figure(figure: Figure, path: Path, dpi: int = 120, tight: bool = True) -> None:
    """Write ``figure`` to ``path`` in the format its suffix names (PNG without one), cropped to
    its content when ``tight``, replacing an earlier plot whole (a failed write leaves the old
    one), and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_on_success(path) as staging:
            kind = path.suffix.lstrip(".").lower() or "png"
            figure.savefig(staging, format=kind, dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(figure)


def plot_routing_curves(curves: dict[str, list[float]], quality: PairQuality, path: Path, title: str) -> None:
    """Write a PNG with each router's curve, the oracle's and the random router's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    shares, means = routing_curve(quality.strong - quality.weak, quality)
    axes.plot(shares, means, color="black", linestyle=":", label="oracle")
    axes.plot([0, 1], [quality.weak.mean(), quality.strong.mean()], color="grey", linestyle="--", label="random")
    for name, scores in curves.items():
        shares, means = routing_curve(np.asarray(scores), quality)
        axes.plot(shares, means, label=name)
    axes.set_xlabel("share of calls to the strong model")
    axes.set_ylabel("mean quality")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def plot_leave_one_out(table: LeaveOneOutTable, path: Path) -> None:
    """Write a PNG of held-out APGR: one group of bars per family, one bar per router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(table.pairs)
    routers = table.routers()
    width = 0.8 / len(routers)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for number, router in enumerate(routers):
        values = [table.family_mean(router, family) for family in families]
        axes.bar(np.arange(len(families)) + number * width - 0.4 + width / 2, values, width, label=router)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(np.arange(len(families)), families)
    axes.set_ylabel("held-out APGR (mean over the family's pairs)")
    axes.set_ylim(0.3, 0.85)
    records = "records" if table.split == "all" else f"{table.split} records"
    axes.set_title(f"leave one family out: train on the others, evaluate on this family's {records}", fontsize=9)
    axes.legend(fontsize=8, ncol=3)
    save_figure(figure, path)
