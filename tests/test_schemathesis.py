"""schemathesis against the proxy's own OpenAPI schema, with the fake upstreams behind it: no
server errors, no responses outside the schema, and the handlers accept exactly what the schema
calls valid (positive and negative data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import Proxy
from tests.fake_upstream import FakeUpstream

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "unsupported_method",
    ]
)
MAX_EXAMPLES = 100  # per operation and phase; about 350 requests in all


def schemathesis_command() -> str:
    installed = Path(sys.executable).with_name("schemathesis")
    return str(installed) if installed.exists() else shutil.which("schemathesis") or "schemathesis"


def test_schemathesis_finds_nothing(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            schemathesis_command(),
            "run",
            f"{proxy.url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261122",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "30",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert "passed" in summary and "failure" not in summary.lower()
    assert strong.received or weak.received  # schema-valid requests did reach an upstream
