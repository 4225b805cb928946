"""Render the Grafana dashboard's panels as a PNG from real Prometheus data.

Starts two fake upstreams, a real ``routegate serve`` and a real Prometheus (the Debian
``prometheus`` binary) scraping it every second, sends a traffic mix in three phases (threshold
0.7, a 50% target route, threshold 0.8 while the strong upstream fails for a while), then
runs every query of config/grafana/dashboards/routegate.json against Prometheus and plots them
in the dashboard's layout with matplotlib (no Grafana runs here).

    .venv/bin/python bench/render_dashboard.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from openai import NotFoundError, OpenAI  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import proxy_env, running_proxy  # noqa: E402
from tests.dashboard import dashboard, substitute  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402
from tests.prometheus_server import PrometheusServer, running_prometheus  # noqa: E402

PHASES = (("router-random-0.7", False), ("router-random-50%", False), ("router-random-0.8", True))  # model, strong fails
VARIABLES = {"deployment": ".*", "router": ".*", "model": ".*"}
RATE_INTERVAL = "10s"
STEP = 2.0


def send_traffic(api: str, strong: FakeUpstream, seconds_per_phase: float, clients: int) -> None:
    """Each phase: ``clients`` threads send requests for ``seconds_per_phase`` seconds."""
    messages = [{"role": "user", "content": "Summarise the plot of Hamlet in two sentences."}]

    def client_loop(model: str, until: float, seed: int) -> None:
        client = OpenAI(base_url=api, api_key="unused", max_retries=0)
        count = seed
        while time.monotonic() < until:
            count += 1
            if count % 20 == 0:  # an unknown model now and then: 404s for the error-responses panel
                try:
                    client.chat.completions.create(model="no-such-model", messages=messages)
                except NotFoundError:
                    pass
            elif count % 3 == 0:
                for _ in client.chat.completions.create(
                    model=model, messages=messages, stream=True, stream_options={"include_usage": True}
                ):
                    pass
            else:
                client.chat.completions.create(model=model, messages=messages)
            time.sleep(0.15)

    with tqdm(total=len(PHASES) * seconds_per_phase, unit="s", desc="traffic") as bar:
        for model, strong_fails in PHASES:
            until = time.monotonic() + seconds_per_phase
            if strong_fails:
                threading.Timer(seconds_per_phase / 3, lambda: strong.behaviour.fail_statuses.extend([503] * 12)).start()
            with ThreadPoolExecutor(clients) as pool:
                futures = [pool.submit(client_loop, model, until, seed) for seed in range(clients)]
                while any(not future.done() for future in futures):
                    time.sleep(1)
                    bar.update(1)
                for future in futures:
                    future.result()


def _series(prometheus: PrometheusServer, expr: str, start: float, end: float) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    result = prometheus.query_range(expr, start, end, STEP)
    out = []
    for item in result:
        values = np.array([[float(t), float(v)] for t, v in item["values"]])
        out.append((item["metric"], values[:, 0] - start, values[:, 1]))
    return out


def _legend(template: str, labels: dict) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _format_stat(value: float, unit: str | None) -> str:
    if unit == "percentunit":
        return f"{value:.1%}"
    if unit == "currencyUSD":
        return f"${value:.4f}"
    return f"{value:.3g}"


def draw_heatmap(axis: plt.Axes, prometheus: PrometheusServer, panel: dict, start: float, end: float) -> None:
    """Per-bucket score counts over time (cumulative buckets differenced) with the threshold on top."""
    expr = substitute(panel["targets"][0]["expr"], VARIABLES, RATE_INTERVAL, "1h")
    buckets = sorted(
        ((float(labels["le"]), times, values) for labels, times, values in _series(prometheus, expr, start, end)),
        key=lambda bucket: bucket[0],
    )
    finite = [bucket for bucket in buckets if np.isfinite(bucket[0])]
    times = finite[0][1]
    cumulative = np.array([np.interp(times, bucket[1], bucket[2]) for bucket in finite])
    counts = np.diff(np.vstack([np.zeros_like(times), cumulative]), axis=0)
    edges = [0.0] + [bucket[0] for bucket in finite]
    axis.pcolormesh(times, edges, counts[:, :-1] if counts.shape[1] == len(times) else counts, cmap="Oranges", shading="flat")
    for labels, t, v in _series(prometheus, 'max by (router) (routegate_router_threshold{router=~".*"})', start, end):
        axis.plot(t, v, color="tab:blue", linewidth=2, label=f"threshold {labels.get('router', '')}")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, loc="upper left")


def render(prometheus: PrometheusServer, start: float, end: float, out: Path) -> None:
    """Plot every dashboard panel over [start, end] into ``out``."""
    board = dashboard()
    stats = [panel for panel in board["panels"] if panel["type"] == "stat"]
    graphs = [panel for panel in board["panels"] if panel["type"] != "stat"]
    columns = 3
    rows = 1 + (len(graphs) + columns - 1) // columns
    figure = plt.figure(figsize=(15, 3 * rows), layout="constrained")
    grid = figure.add_gridspec(rows, columns * 2, height_ratios=[0.45] + [1] * (rows - 1))
    time_range = f"{int(end - start) + 1}s"
    for index, panel in enumerate(stats):
        axis = figure.add_subplot(grid[0, index])
        [(_, value)] = [
            (item["metric"], float(item["value"][1]))
            for item in prometheus.query(substitute(panel["targets"][0]["expr"], VARIABLES, RATE_INTERVAL, time_range), end)
        ]
        axis.text(
            0.5,
            0.38,
            _format_stat(value, panel["fieldConfig"]["defaults"].get("unit")),
            ha="center",
            va="center",
            fontsize=17,
            weight="bold",
            color="tab:green",
        )
        axis.set_title(panel["title"], fontsize=10)
        axis.axis("off")
    for index, panel in enumerate(graphs):
        axis = figure.add_subplot(grid[1 + index // columns, (index % columns) * 2 : (index % columns) * 2 + 2])
        axis.set_title(panel["title"], fontsize=10)
        if panel["type"] == "heatmap":
            draw_heatmap(axis, prometheus, panel, start, end)
        else:
            for target in panel["targets"]:
                expr = substitute(target["expr"], VARIABLES, RATE_INTERVAL, time_range)
                for labels, times, values in _series(prometheus, expr, start, end):
                    axis.plot(times, values, label=_legend(target["legendFormat"], labels), linewidth=1.5)
            if axis.lines:
                axis.legend(fontsize=7, loc="upper left")
            unit = panel["fieldConfig"]["defaults"].get("unit")
            if unit:
                axis.set_ylabel(unit, fontsize=8)
        axis.set_xlim(0, end - start)
        axis.tick_params(labelsize=7)
        axis.set_xlabel("seconds", fontsize=7)
    started = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC")
    phases = " | ".join(f"{model}{' + strong upstream failing' if fails else ''}" for model, fails in PHASES)
    figure.suptitle(
        f"{board['title']}: dashboard queries on real Prometheus data ({started}), fake upstreams\nphases: {phases}", fontsize=12
    )
    figure.savefig(out, dpi=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--seconds-per-phase", type=float, default=25)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        parser.error("prometheus is not installed (Debian package 'prometheus')")
    strong, weak = FakeUpstream("strong").start(), FakeUpstream("weak").start()
    strong.behaviour.delay, weak.behaviour.delay = 0.12, 0.04
    strong.behaviour.chunk_delay = weak.behaviour.chunk_delay = 0.02
    workdir = Path(tempfile.mkdtemp(prefix="routegate-dashboard-"))
    try:
        with running_proxy(proxy_env(strong, weak, retries="1"), workdir) as proxy:
            with running_prometheus(prometheus_binary, [proxy.url.removeprefix("http://")], workdir) as prometheus:
                prometheus.wait_until(lambda: bool(prometheus.query('up{job="routegate"} == 1')), "a first scrape")
                start = time.time()
                send_traffic(proxy.api, strong, args.seconds_per_phase, args.clients)
                time.sleep(3)  # the last scrapes
                end = time.time()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                render(prometheus, start, end, args.out)
    finally:
        strong.stop()
        weak.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
