"""How long a target route among several models takes to find its threshold, per request.

A ``CostShareController`` (server/cost_targets.py) with a full window of random predictions is
asked for a threshold 200 times in a closed loop, as requests ask it: each answer is routed at
the threshold returned and its cost fed back, which moves the share wanted a little every time.
Prints the time per call and the share of the all-best cost that the answers spent, for each
window size and number of models:

    python bench/cost_target_speed.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from routers.multi_model import choose
from server.cost_targets import CostShareController


def closed_loop(window: int, models: int, calls: int, share: float, seed: int) -> tuple[float, float, float]:
    """Mean and largest milliseconds per ``threshold()`` call, and the realised cost share."""
    rng = np.random.default_rng(seed)
    prices = [float(price) for price in np.geomspace(1.0, 40.0, models)]  # cheapest first, the best last
    best = models - 1
    controller = CostShareController(window=window, feedback_horizon=100, best=best)

    def prompt() -> np.ndarray:
        row = rng.random(models)
        row[best] = 0.5
        return row

    for _ in range(window):
        controller.observe(tuple(prompt()))
    times = []
    for _ in range(calls):
        row = prompt()
        started = time.perf_counter()
        threshold = controller.threshold(share, prices, prices)
        times.append(time.perf_counter() - started)
        controller.observe(tuple(row))
        chosen = int(choose(row[None, :], prices, best, threshold)[0])
        controller.record(prices[chosen], prices[best], share)
    realised = controller.realised_share
    return 1000 * float(np.mean(times)), 1000 * max(times), float("nan") if realised is None else realised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="threshold() calls per cell")
    parser.add_argument("--share", type=float, default=0.3, help="the route's cost share")
    args = parser.parse_args()
    print(f"{'window':>7} {'models':>7} {'ms/call':>9} {'max ms':>8} {'realised share':>15}")
    for window, models in ((500, 3), (500, 16), (5000, 3)):
        mean_ms, max_ms, realised = closed_loop(window, models, args.calls, args.share, seed=0)
        print(f"{window:>7} {models:>7} {mean_ms:>9.3f} {max_ms:>8.2f} {realised:>15.3f}")


if __name__ == "__main__":
    main()
