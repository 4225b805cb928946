"""Target vs realised strong share over time, on a stream whose mix shifts.

    python bench/target_share_plot.py [--router mf] [--target 30] [--out docs/target_share.png]

Starts two fake upstreams and a real ``routegate serve`` (as the tests do), replays 700 MMLU
questions then 800 prompts of a second mix (LLMRouter's tasks, Winogrande) from
``$ROUTEGATE_DATA_DIR`` (default ``../shared/data``) with the async openai SDK, prints the
realised shares and thresholds per phase and writes a PNG: the rolling strong share against the
target, and the threshold the proxy used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from routers.registry import installed_routers  # noqa: E402
from tests.conftest import proxy_env, running_proxy  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402
from tests.replay import replay, shifted_stream  # noqa: E402

ROLLING = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_router = "mf" if "mf" in installed_routers() else "standin"
    parser.add_argument("--router", default=default_router)
    parser.add_argument("--target", type=float, default=30.0, help="target strong share in percent")
    parser.add_argument("--easy", type=int, default=700)
    parser.add_argument("--hard", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "target_share.png")
    args = parser.parse_args()
    module = "tests.standin_router" if args.router == "standin" else "server.cli"
    target = args.target / 100

    prompts = shifted_stream(args.easy, args.hard)
    strong, weak = FakeUpstream("strong").start(), FakeUpstream("weak").start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = {"router": args.router, "score_cache_size": "0", "log_level": "warning"}
            if args.router == "standin":  # a router is installed where its checkpoint folder is; the stand-in needs no files
                (Path(tmp) / "checkpoints" / "standin").mkdir(parents=True)
                settings["checkpoint_dir"] = str(Path(tmp) / "checkpoints")
            proxy_context = running_proxy(proxy_env(strong, weak, **settings), Path(tmp), module=module, ready_timeout=300)
            routed = []
            with (
                proxy_context as proxy,
                tqdm(total=len(prompts), desc=f"replaying through router-{args.router}-{args.target:g}%") as bar,
            ):
                for start in range(0, len(prompts), 200):  # chunks keep the bar moving, order kept
                    routed += asyncio.run(
                        replay(proxy.api, f"router-{args.router}-{args.target:g}%", prompts[start : start + 200])
                    )
                    bar.update(len(prompts[start : start + 200]))
    finally:
        strong.stop()
        weak.stop()

    flags = [decision.tier == "strong" for decision in routed]
    thresholds = [decision.threshold for decision in routed]
    phases = {"easy (MMLU)": slice(0, args.easy), "second mix": slice(args.easy, None), "last 500": slice(-500, None)}
    print(f"router {args.router}, target {target:.2f}, {len(routed)} requests")
    print(f"{'phase':<20} {'realised share':>15} {'median threshold':>17}")
    for name, part in phases.items():
        print(f"{name:<20} {sum(flags[part]) / len(flags[part]):>15.3f} {statistics.median(thresholds[part]):>17.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rolling = [
        sum(flags[max(0, i - ROLLING + 1) : i + 1]) / len(flags[max(0, i - ROLLING + 1) : i + 1]) for i in range(len(flags))
    ]
    figure, share_axis = plt.subplots(figsize=(9, 4.5))
    share_axis.plot(rolling, label=f"realised strong share (last {ROLLING} requests)", color="tab:blue")
    share_axis.axhline(target, color="tab:green", linestyle="--", label=f"target {target:.0%}")
    share_axis.axvline(args.easy, color="grey", linestyle=":", label="mix shifts: MMLU → LLMRouter + Winogrande")
    share_axis.set_xlabel("request")
    share_axis.set_ylabel("strong share")
    share_axis.set_ylim(0, 1)
    threshold_axis = share_axis.twinx()
    threshold_axis.plot(thresholds, color="tab:orange", alpha=0.6, label="threshold used")
    threshold_axis.set_ylabel("threshold")
    threshold_axis.set_ylim(0, 1)
    lines = share_axis.get_legend_handles_labels()[0] + threshold_axis.get_legend_handles_labels()[0]
    labels = share_axis.get_legend_handles_labels()[1] + threshold_axis.get_legend_handles_labels()[1]
    share_axis.legend(lines, labels, loc="upper left", fontsize=8)
    share_axis.set_title(f"router-{args.router}-{args.target:g}%: realised strong share vs target")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
