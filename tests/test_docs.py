"""The docs site builds strictly, its settings table matches the ``Settings`` model, and the README
stays a short page whose links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from server.settings import Settings
from server.settings_doc import PAGE, main, render
from tests.conftest import REPO

README = REPO / "README.md"


def test_the_committed_settings_table_is_the_one_the_model_generates() -> None:
    page = PAGE.read_text()
    assert render(page) == page, "docs/configuration.md is out of date: run python -m server.settings_doc"
    assert main(["--check"]) == 0


def test_the_table_lists_every_setting_with_its_default_and_description() -> None:
    page = PAGE.read_text()
    for name, field in Settings.model_fields.items():
        assert f"`ROUTEGATE_{name.upper()}" in page
        assert field.description
    assert "| `ROUTEGATE_STRONG__MODEL` | `gpt-4o` |" in page
    assert "| `ROUTEGATE_RETRIES` | `2` | ≥ 0, ≤ 10 |" in page
    assert "`ROUTEGATE_ROUTE_ON` | `last_user` | `last_user`, `conversation`, `sticky` |" in page
    assert "| `ROUTEGATE_FEEDBACK_DB` | empty |" in page  # not an empty code span, shown as two backticks


def test_a_stale_table_is_caught_and_regenerated() -> None:
    page = PAGE.read_text()
    stale = page.replace("| `ROUTEGATE_RETRIES` | `2` |", "| `ROUTEGATE_RETRIES` | `3` |")
    stale = stale.replace("| `ROUTEGATE_PORT` |", "| `ROUTEGATE_PORT_GONE` |")
    assert stale != page and render(stale) == page


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "ROUTEGATE_MAX_QUEUED_REQUESTS" in built


def test_the_readme_is_short_and_its_links_lead_somewhere() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if not target.startswith(("http://", "https://", "mailto:"))]
    assert local, "the README links into docs/"
    missing = [target for target in local if not (REPO / target).exists()]
    assert not missing, missing
    fragments = re.findall(r"\]\((docs/[^)#\s]+\.md)#([^)\s]+)\)", text)
    assert fragments, "the README links to sections of the docs"
    unknown = [f"{page}#{anchor}" for page, anchor in fragments if anchor not in _heading_anchors(REPO / page)]
    assert not unknown, unknown


def _heading_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as the docs site's table of contents makes them."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", page.read_text(), flags=re.M)
    texts = (re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", heading) for heading in headings)
    return {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower()) for text in texts}
