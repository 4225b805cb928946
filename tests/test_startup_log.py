"""What ``routegate serve`` says about its set-up when it starts, and where tests keep caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from server.settings import load_settings
from server.upstream_keys import missing_key_warnings
from tests.conftest import REPO, STRONG_KEY, WEAK_KEY, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream

NO_KEY = "has no API key"


def test_an_upstream_without_a_key_is_warned_about(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    env = proxy_env(strong, weak)
    del env["ROUTEGATE_WEAK__API_KEY"]
    env.pop("OPENAI_API_KEY", None)
    with running_proxy(env, tmp_path) as proxy:
        log = proxy.log()
    warnings = [line for line in log.splitlines() if NO_KEY in line]
    assert len(warnings) == 1, log
    assert "WARNING" in warnings[0] and "weak upstream" in warnings[0] and "ROUTEGATE_WEAK__API_KEY" in warnings[0]
    assert weak.url in warnings[0] and "fake-weak" in warnings[0]
    assert STRONG_KEY[:10] not in log and WEAK_KEY[:10] not in log


def test_a_short_client_or_metrics_key_is_warned_about(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    """A short key could be found by trying keys (a client key also against its fingerprint, kept in
    the feedback store and Redis): named by its place, never shown."""
    keys = ["s3cr3t-short", "a-long-enough-client-key-0123456789"]
    env = proxy_env(strong, weak, api_keys=json.dumps(keys), metrics_key="m3trics-shrt")
    with running_proxy(env, tmp_path) as proxy:
        log = proxy.log()
    warnings = [line for line in log.splitlines() if "random characters" in line]
    assert [line.split(" routegate ", 1)[1].split(" is ")[0] for line in warnings] == [
        "ROUTEGATE_API_KEYS[0]",
        "ROUTEGATE_METRICS_KEY",
    ], log
    assert all("WARNING" in line and "is under 20 characters" in line for line in warnings)
    assert "s3cr3t" not in log and "m3trics" not in log and "a-long-enough" not in log


def test_among_several_models_the_entry_without_a_key_is_warned_about(monkeypatch):
    for name in ("OPENAI_API_KEY", "ROUTEGATE_STRONG__API_KEY", "ROUTEGATE_WEAK__API_KEY"):
        monkeypatch.delenv(name, raising=False)
    entries = [
        {
            "name": "small",
            "model": "small-model",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "sk-small-0123456789",
            "input_price": 0.1,
            "output_price": 0.4,
        },
        {"name": "big", "model": "big-model", "base_url": "http://127.0.0.1:9/v1", "input_price": 5, "output_price": 15},
    ]
    warnings = missing_key_warnings(load_settings(models=entries))
    assert len(warnings) == 1  # not the unused strong and weak tiers
    assert "big upstream" in warnings[0] and "ROUTEGATE_MODELS entry 'big'" in warnings[0]
    assert "sk-small" not in warnings[0]


def test_upstreams_with_keys_start_without_that_warning(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        log = proxy.log()
    assert NO_KEY not in log
    assert "is not a routegate setting" not in log  # every variable of a normal set-up is known


def test_a_misspelt_setting_is_named_with_the_one_meant(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    env = {**proxy_env(strong, weak), "ROUTEGATE_SHUTDOWN_GRACE_SECOND": "99", "ROUTEGATE_XYZZY": "sk-do-not-log"}
    with running_proxy(env, tmp_path) as proxy:
        log = proxy.log()
    [misspelt] = [line for line in log.splitlines() if "ROUTEGATE_SHUTDOWN_GRACE_SECOND " in line]
    assert "WARNING" in misspelt and "not a routegate setting and is ignored" in misspelt
    assert "did you mean ROUTEGATE_SHUTDOWN_GRACE_SECONDS?" in misspelt and "99" not in misspelt
    [unknown] = [line for line in log.splitlines() if "ROUTEGATE_XYZZY" in line]
    assert unknown.endswith("ROUTEGATE_XYZZY is not a routegate setting and is ignored")
    assert "sk-do-not-log" not in log


def test_tests_keep_router_caches_out_of_the_home_directory(tmp_path: Path):
    cache = Path(os.environ["ROUTEGATE_CACHE_DIR"])
    assert not cache.is_relative_to(Path.home() / ".cache")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": f"What is 2 + 2? ({uuid.uuid4()})"}) + "\n")  # never cached yet
    written_before = {path: path.stat().st_mtime_ns for path in cache.glob("minilm*-embeddings.npz")}
    home = tmp_path / "home"
    home.mkdir()
    command = ["score", "--router", "mf", "--input", str(prompts), "--output", str(tmp_path / "out.jsonl")]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr  # the encoder loaded, without a bar of its own inside score's
    written = {path: path.stat().st_mtime_ns for path in cache.glob("minilm*-embeddings.npz")}
    assert written != written_before  # the subprocess wrote the new embedding into the session's cache directory
    assert not (home / ".cache" / "routegate").exists()


def test_service_links_and_nested_settings_are_not_taken_for_misspelt_settings() -> None:
    from server.settings import unknown_variable_warnings

    links = {
        "ROUTEGATE_SERVICE_HOST": "10.0.0.1",
        "ROUTEGATE_SERVICE_PORT_HTTP": "8000",
        "ROUTEGATE_PORT_8000_TCP_ADDR": "10.0.0.1",
        "ROUTEGATE_REDIS_SERVICE_PORT": "6379",
        "ROUTEGATE_REDIS_PORT": "tcp://10.0.0.2:6379",
    }
    nested = {"ROUTEGATE_STRONG__BASE_URL": "http://x/v1", "ROUTEGATE_ALIASES__CHEAP": "router-mf-20%", "ROUTEGATE_PORT__X": "1"}
    assert unknown_variable_warnings({**links, **nested, "ROUTEGATE_TRESHOLD": "0.4"}) == [
        "ROUTEGATE_PORT__X is not a routegate setting and is ignored (did you mean ROUTEGATE_PORT?)",
        "ROUTEGATE_TRESHOLD is not a routegate setting and is ignored (did you mean ROUTEGATE_THRESHOLD?)",
    ]
