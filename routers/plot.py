"""The evaluation plot: mean quality against the share of strong calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.evaluation import PairQuality, routing_curve


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
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
