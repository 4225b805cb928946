"""The deployment files: checked by their own tools, and what they reference exists and agrees.

No Docker engine runs here, so the compose file is validated and resolved by the real Compose
binary and its references (paths, ports, settings names, datasource uid) are checked against
the repository and the settings model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from server.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from server.shutdown import CLOSING_SECONDS
from tests.conftest import REPO, stop_process
from tests.tools import docker_compose, require_tool

DASHBOARD = REPO / "config/grafana/dashboards/routegate.json"
DATASOURCES = REPO / "config/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = REPO / "config/grafana/provisioning/dashboards/routegate.yml"
PROMETHEUS_CONFIG = REPO / "config/prometheus.yml"
ALERTS = REPO / "config/prometheus/alerts.yml"


GRAFANA_PASSWORD = "grafana-test-password"


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the repository with the compose file's one required variable set."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    environment.update(env if env is not None else {"GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD})
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=environment, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose project with every profile on, as the Compose binary resolves it."""
    result = _run(docker_compose(), "--profile", "local-llm", "--profile", "scale", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _dockerfile_env() -> dict[str, str]:
    """ENV settings of the Dockerfile, every stage."""
    joined = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def _setting_exists(env_name: str) -> bool:
    """Whether ``ROUTEGATE_A__B`` names a field of Settings (nested models by ``__``)."""
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix(ENV_PREFIX).lower().split("__")
    for position, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if position + 1 < len(parts):
            if not nested:
                return False
            model = annotation
    return True


def _host_path(service: dict[str, Any], container_path: str) -> PurePosixPath | None:
    """The repository file a service sees at ``container_path`` through a bind mount."""
    for volume in service.get("volumes", []):
        target = PurePosixPath(volume["target"])
        wanted = PurePosixPath(container_path)
        if volume["type"] == "bind" and (wanted == target or target in wanted.parents):
            return PurePosixPath(volume["source"]) / wanted.relative_to(target)
    return None


@pytest.mark.parametrize(
    "profile", [[], ["--profile", "local-llm"], ["--profile", "scale"]], ids=["default", "local-llm", "scale"]
)
def test_compose_file_validates(profile: list[str]) -> None:
    result = _run(docker_compose(), *profile, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_check_fails_on_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: Compose exits non-zero on a file it rejects."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  gateway:\n    image: routegate\n    no_such_key: 1\n")
    result = _run(docker_compose(), "-f", str(broken), "config", "-q")
    assert result.returncode != 0 and "no_such_key" in result.stderr


def test_dockerfile_passes_hadolint() -> None:
    result = _run(require_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    config = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout


def test_each_alert_fires_when_it_should_and_not_otherwise() -> None:
    """tests/alert_rules_test.yml: target routes kept out of the drift alert, idle target routes,
    replicas judged apart, fallback reasons summed, gateways kept apart, quiet tiers not paged,
    failed scrapes and a lost Redis paged after 5m."""
    promtool = require_tool("promtool")
    result = _run(promtool, "test", "rules", str(REPO / "tests" / "alert_rules_test.yml"))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_bind_mounts_and_build_context_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert PurePosixPath(volume["source"]).is_relative_to(REPO), (name, volume)
                assert (REPO / PurePosixPath(volume["source"]).relative_to(REPO)).exists(), (name, volume)
    assert compose["services"]["routegate"]["build"]["context"] == str(REPO)
    assert (REPO / "Dockerfile").is_file()


def test_every_routegate_env_name_is_a_setting(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sources = {"Dockerfile": _dockerfile_env()}
    sources.update({name: service.get("environment", {}) for name, service in compose["services"].items()})
    seen = 0
    for source, env in sources.items():
        for env_name, value in env.items():
            if env_name.startswith(ENV_PREFIX):
                seen += 1
                assert _setting_exists(env_name), f"{source}: {env_name} is not a routegate setting"
                monkeypatch.setenv(env_name, value)
        if source == "Dockerfile":  # the image listens on 0.0.0.0: it needs client keys, or to be told it may go without
            with pytest.raises(SettingsError, match="ROUTEGATE_ALLOW_UNAUTHENTICATED"):
                load_settings()
            monkeypatch.setenv("ROUTEGATE_API_KEYS", '["client-key"]')
        try:
            load_settings()  # the values are valid too
        except SettingsError as error:
            pytest.fail(f"{source}: {error}")
        for env_name in [*env, "ROUTEGATE_API_KEYS"]:
            monkeypatch.delenv(env_name, raising=False)
    assert seen >= 10
    assert not _setting_exists("ROUTEGATE_STRONG__NOPE") and not _setting_exists("ROUTEGATE_PORT__X")


PASSED_THROUGH = {
    "ROUTEGATE_STRONG__API_KEY": "sk-strong-passed",
    "ROUTEGATE_WEAK__API_KEY": "sk-weak-passed",
    "ROUTEGATE_API_KEYS": '["client-key-passed"]',
    "ROUTEGATE_ALIASES": '{"cheap": "router-mf-0.7"}',
    "ROUTEGATE_DAILY_BUDGET_USD": "12.5",
    "ROUTEGATE_BUDGET_EXHAUSTED": "reject",
    "ROUTEGATE_ALLOW_UNAUTHENTICATED": "true",
    "ROUTEGATE_METRICS_KEY": "metrics-key-passed",
    "ROUTEGATE_ROUTERS": '["mf", "random"]',
    "ROUTEGATE_ALLOW_OVERRIDES": "true",
    "ROUTEGATE_OVERRIDE_KEYS": '["override-key-passed"]',
    "OPENAI_API_KEY": "sk-openai-passed",
    "ROUTEGATE_SHADOW_RATE": "0.05",  # the dashboard's quality panels need judged traffic
    "ROUTEGATE_JUDGE__API_KEY": "sk-judge-passed",
    "ROUTEGATE_JUDGE__MODEL": "judge-model-passed",
}


def test_compose_passes_every_key_setting_through() -> None:
    result = _run(docker_compose(), "config", "--format", "json", env={"GRAFANA_ADMIN_PASSWORD": "pw", **PASSED_THROUGH})
    assert result.returncode == 0, result.stderr
    environment = json.loads(result.stdout)["services"]["routegate"]["environment"]
    assert {name: environment.get(name) for name in PASSED_THROUGH} == PASSED_THROUGH


def test_compose_publishes_on_loopback_and_needs_a_grafana_password(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert all(port["host_ip"] == "127.0.0.1" for port in service.get("ports", [])), name
    assert compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == GRAFANA_PASSWORD
    missing = _run(docker_compose(), "config", "--format", "json", env={})
    assert "required variable GRAFANA_ADMIN_PASSWORD is missing" in missing.stderr and not missing.stdout.strip()


GATEWAYS = ("routegate", "routegate-local", "routegate-scaled")


def test_gateways_and_the_balancer_run_hardened_with_caches_in_tmp(compose: dict[str, Any]) -> None:
    for name in (*GATEWAYS, "local-llm"):  # every service built from this repository
        service = compose["services"][name]
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"], name
        if name in GATEWAYS:
            assert service["environment"]["XDG_CACHE_HOME"].startswith("/tmp/"), name
    balancer = compose["services"]["balancer"]  # the one service facing clients that is not built here
    assert balancer["image"].startswith("nginxinc/nginx-unprivileged:"), "nginx's own image runs its master process as root"
    assert balancer["read_only"] is True and balancer["tmpfs"] == ["/tmp"] and balancer["cap_drop"] == ["ALL"]
    assert balancer["security_opt"] == ["no-new-privileges:true"]
    # the local LLM writes its converted model to its cache, a volume, where the home it runs in is read-only
    assert [volume["target"] for volume in compose["services"]["local-llm"]["volumes"]] == ["/home/routegate/.cache"]


def test_docker_stops_a_gateway_only_after_its_grace_period_and_clean_up(compose: dict[str, Any]) -> None:
    for name in GATEWAYS:
        service = compose["services"][name]
        grace = float(service["environment"]["ROUTEGATE_SHUTDOWN_GRACE_SECONDS"])
        stop_after = float(service["stop_grace_period"].removesuffix("s"))
        assert grace + CLOSING_SECONDS < stop_after <= grace + CLOSING_SECONDS + 10, name


def test_publishing_the_gateways_leaves_prometheus_and_grafana_on_loopback() -> None:
    env = {"GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD, "PUBLISH_ADDRESS": "0.0.0.0"}
    result = _run(docker_compose(), "--profile", "local-llm", "--profile", "scale", "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    published = {name: {port["host_ip"] for port in service.get("ports", [])} for name, service in services.items()}
    assert published["routegate"] == published["balancer"] == {"0.0.0.0"}
    assert published["prometheus"] == published["grafana"] == {"127.0.0.1"}  # MONITORING_PUBLISH_ADDRESS


def test_ports_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway_port = int(_dockerfile_env()["ROUTEGATE_PORT"])
    stages = {
        match[1]: stage
        for stage in re.split(r"\n(?=FROM )", (REPO / "Dockerfile").read_text())
        if (match := re.match(r"FROM \S+ AS (\S+)", stage))
    }
    assert f"EXPOSE {gateway_port}" in stages["routegate"]
    assert services["routegate"]["build"]["target"] == "routegate"
    assert services["local-llm"]["build"]["target"] == "local-llm"
    metrics_port = int(services["routegate"]["environment"]["ROUTEGATE_METRICS_PORT"])
    for name in ("routegate", "routegate-local", "routegate-scaled"):
        # the API port is published (not the scaled replicas': nginx is), /metrics is on a port of its own that is not
        assert [port["target"] for port in services[name].get("ports", [])] == ([] if name.endswith("scaled") else [gateway_port])
        assert "ROUTEGATE_PORT" not in services[name]["environment"]
        assert int(services[name]["environment"]["ROUTEGATE_METRICS_PORT"]) == metrics_port != gateway_port
    # Prometheus scrapes each gateway service on its metrics port.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    targets = [target for job in scrape for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"routegate:{metrics_port}"]  # always up; the profiles' gateways are found by DNS
    found = [(name, sd["port"]) for job in scrape for sd in job["dns_sd_configs"] for name in sd["names"]]
    assert sorted(found) == [("routegate-local", metrics_port), ("routegate-scaled", metrics_port)]
    # ... and so does the replicas' scrape job that docs/operations.md shows.
    shown = re.search(r"```yaml\n(\s*- job_name: routegate\n.*?)```", (REPO / "docs/operations.md").read_text(), re.S)
    assert shown, "docs/operations.md no longer shows the replicas' scrape job"
    assert [sd["port"] for sd in yaml.safe_load(shown[1])[0]["dns_sd_configs"]] == [metrics_port]
    # Grafana reaches Prometheus on the port Prometheus serves.
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert [port["target"] for port in services["prometheus"]["ports"]] == [9090]
    # The local-LLM gateway's weak upstream is the local-llm service on the port it listens on.
    local_llm = services["local-llm"]
    llm_port = local_llm["command"][local_llm["command"].index("--port") + 1]
    assert services["routegate-local"]["environment"]["ROUTEGATE_WEAK__BASE_URL"] == f"http://local-llm:{llm_port}/v1"
    assert local_llm["expose"] == [llm_port]
    assert f":{llm_port}/health" in " ".join(local_llm["healthcheck"]["test"])
    assert f"EXPOSE {llm_port}" in stages["local-llm"] and f'"--port", "{llm_port}"' in stages["local-llm"]


def test_prometheus_and_grafana_find_their_files_in_the_containers(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert _host_path(prometheus, config_path) == PurePosixPath(PROMETHEUS_CONFIG)
    for rule_file in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        assert _host_path(prometheus, str(PurePosixPath(config_path).parent / rule_file)) == PurePosixPath(ALERTS)

    grafana = compose["services"]["grafana"]
    assert _host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml") == PurePosixPath(DATASOURCES)
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert _host_path(grafana, provider["options"]["path"] + "/routegate.json") == PurePosixPath(DASHBOARD)
    assert _host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == PurePosixPath(DASHBOARD)


def test_dashboard_uses_the_provisioned_datasource_and_has_its_variables() -> None:
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {variable["name"] for variable in dashboard["templating"]["list"]} == {"deployment", "router", "model"}
    assert all(variable["datasource"]["uid"] == uid for variable in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"] and all(target["datasource"]["uid"] == uid for target in panel["targets"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_scale_profile_puts_the_balancer_in_front_of_replicas_sharing_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas, redis, balancer = services["routegate-scaled"], services["redis"], services["balancer"]
    assert replicas["deploy"]["replicas"] == 3 and "ports" not in replicas  # scaled: no fixed host port
    assert replicas["environment"]["ROUTEGATE_REDIS_URL"] == f"redis://redis:{redis['expose'][0]}/0"
    assert replicas["depends_on"]["redis"]["condition"] == "service_healthy"
    gateway_port = int(_dockerfile_env()["ROUTEGATE_PORT"])
    assert replicas["expose"] == [str(gateway_port)]
    conf_path = _host_path(balancer, "/etc/nginx/conf.d/default.conf")
    assert conf_path is not None
    conf = (REPO / PurePosixPath(conf_path).relative_to(REPO)).read_text()
    assert f"server routegate-scaled:{gateway_port} resolve;" in conf
    listen = int(re.search(r"^\s*listen (\d+);", conf, re.M).group(1))
    assert [port["target"] for port in balancer["ports"]] == [listen]
    sd = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["dns_sd_configs"]
    assert {"names": ["routegate-scaled"], "type": "A", "port": int(replicas["environment"]["ROUTEGATE_METRICS_PORT"])} in sd


def test_balancers_let_go_of_idle_connections_before_routegate_closes_them() -> None:
    """A balancer that sends a request on a connection routegate is closing answers 502: nginx's
    idle timeout is below routegate's default, and Kubernetes' setting above the usual 60 s of
    the ingress or cloud balancer in front."""
    from server.settings import Settings

    conf = (REPO / "config/nginx/routegate.conf").read_text()
    nginx_idle = int(re.search(r"^\s*keepalive_timeout (\d+)s;", conf, re.M).group(1))
    assert nginx_idle < Settings.model_fields["keep_alive_seconds"].default
    configmap = yaml.safe_load((REPO / "deploy/kubernetes/configmap.yaml").read_text())
    assert int(configmap["data"]["ROUTEGATE_KEEP_ALIVE_SECONDS"]) > 60


def test_the_balancer_passes_requests_on_but_not_metrics(tmp_path: Path) -> None:
    """The scale profile's nginx configuration, run by a real nginx in front of one stand-in replica."""
    import http.server
    import threading

    import httpx

    from tests.fake_upstream import free_port

    class Replica(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = f"replica saw {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    replica = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    port = free_port()
    conf = (REPO / "config/nginx/routegate.conf").read_text()
    conf = re.sub(r"^resolver .*$", "", conf, flags=re.M)  # Docker's DNS; the stand-in has an address
    conf = re.sub(r"server routegate-scaled:\d+ resolve;", f"server 127.0.0.1:{replica.server_address[1]};", conf)
    conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{port};", conf)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; {conf} }}\n"
    )
    nginx = subprocess.Popen(
        [require_tool("nginx"), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"]
    )
    try:
        for _ in range(100):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert (answer.status_code, answer.text) == (200, "replica saw /v1/models")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        assert metrics.status_code == 404 and "replica" not in metrics.text
    finally:
        stop_process(nginx)
        replica.shutdown()
        replica.server_close()
