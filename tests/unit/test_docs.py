"""The documentation: its examples run, its render markers render from the stored files, and
the README stays short. (The site itself is built with --strict by scripts/test.sh.)"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_write_a_policy_example_runs():
    (block,) = _python_blocks(ROOT / "docs" / "policies.md")
    exec(compile(block, "docs/policies.md", "exec"), {"__name__": "docs_example"})


def test_every_render_marker_in_the_docs_renders(hooks):
    markers = []
    for page in (ROOT / "docs").rglob("*.md"):
        markers += hooks.MARK.findall(page.read_text())
    assert {kind for kind, _ in markers} == {"paper", "matrix", "bench", "patching"}
    for kind, arg in markers:
        table = hooks.render(kind, arg or None)
        assert table.startswith("| ") and "\n|---|" in table, (kind, arg)


def test_a_marker_naming_nothing_stored_fails_the_build(hooks):
    with pytest.raises(KeyError, match="no benchmark table 'nope'; stored: "):
        hooks.render("bench", "nope")
    with pytest.raises(ValueError, match="unknown render marker 'plot'; accepted: "):
        hooks.render("plot", None)


def test_the_docs_render_numbers_for_reading(hooks):
    assert hooks._number(46080.0) == "46,080"
    assert hooks._number(0.000547) == "0.000547"
    assert hooks._number(22.3456) == "22.3"
    assert hooks._markdown([{"a": 1, "b": "x|y"}]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"


def test_every_page_is_in_the_sites_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {
        p.relative_to(ROOT / "docs").as_posix()
        for p in (ROOT / "docs").rglob("*.md")
        if "notebooks" not in p.parts
    }
    assert pages and all(page in nav for page in pages), pages - {p for p in pages if p in nav}


def test_the_readme_is_short_and_links_its_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 11_000, "the README is a summary: depth goes in docs/"
    assert "bash scripts/setup.sh && .venv/bin/kvdirect-interp verify" in text
    assert "bash scripts/test.sh" in text
