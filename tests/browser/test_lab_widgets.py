"""The widgets in a real browser: JupyterLab on 127.0.0.1, notebooks/widgets.ipynb run in
headless Chromium (Debian's package, driven by Playwright). nbval runs no JavaScript, so
this is the only proof that the explorers render and respond.

Checks: every explorer's plotly figure renders; changing the patching explorer's `site`
dropdown with the mouse redraws its figure (title and heatmap data in the DOM); a cell run
afterwards shows the kernel saw the change; no widget errors in the console. Screenshots go
to .browser-shots/ (not committed)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "widgets.ipynb"
SHOTS = ROOT / ".browser-shots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WIDGET_ERRORS = (
    "Error displaying widget",
    "Failed to load model",
    "Could not create",
    "No version of module",
    "pageerror",
)

JS_KERNEL_IDLE = """() => { const w = window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle'; }"""
JS_TITLES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(
  gd => (gd.layout && gd.layout.title && gd.layout.title.text) || '')"""
JS_PATCH_FIG = """() => { const gd = Array.from(document.querySelectorAll('.js-plotly-plot'))
  .find(g => g.layout && g.layout.title && /KL\\(clean/.test(g.layout.title.text));
  return gd ? {title: gd.layout.title.text, z: gd.data[0].z} : null; }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: scripts/test.sh installs Debian's chromium in CI")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    state = tmp_path_factory.mktemp("lab")
    root, settings = state / "root", state / "settings"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {
        **os.environ,
        **{
            k: str(state / k.lower())
            for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")
        },
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    token, port = secrets.token_hex(16), _free_port()
    log = open(state / "lab.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={settings}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start; see {state / 'lab.log'}")
        yield f"{base}/lab/tree/{NOTEBOOK.name}?reset&token={token}", state
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # only the process group we started
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_widgets_render_and_respond_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, state = lab
    SHOTS.mkdir(exist_ok=True)
    console: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(state / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROME_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.set_default_timeout(180_000)
        try:
            page.goto(url)
            page.wait_for_function(
                "window.jupyterapp && document.querySelector('.jp-NotebookPanel')"
            )
            page.wait_for_function(JS_KERNEL_IDLE)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                "() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3"
            )
            page.wait_for_function("() => document.body.innerText.includes('token match')")
            titles = page.evaluate(JS_TITLES)
            assert any("resid_pre" in t for t in titles), titles
            assert any("rebuild=same" in t for t in titles), titles
            assert any("bytes held" in t for t in titles), titles
            before = page.evaluate(JS_PATCH_FIG)
            page.screenshot(path=str(SHOTS / "1_rendered.png"), full_page=True)

            # a real user action: choose resid_post in the patching explorer's site dropdown
            select = page.locator(".widget-dropdown:has(label:text-is('site')) select").first
            select.scroll_into_view_if_needed()
            select.select_option("resid_post")
            page.wait_for_function(
                "() => { const t = ("
                + JS_PATCH_FIG
                + ")(); return t && t.title.includes('resid_post'); }",
                timeout=120_000,
            )
            after = page.evaluate(JS_PATCH_FIG)
            assert after["z"] != before["z"], "heatmap data did not change"
            page.screenshot(path=str(SHOTS / "2_after_site_change.png"), full_page=True)

            # the kernel saw it: append a cell and run it
            page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").last.click()
            page.evaluate("window.jupyterapp.commands.execute('notebook:insert-cell-below')")
            page.keyboard.press("Enter")
            page.keyboard.type("print('KERNEL-SEES', patching.site.value)")
            page.keyboard.press("Shift+Enter")
            page.wait_for_selector("text=KERNEL-SEES resid_post", timeout=60_000)
            page.screenshot(path=str(SHOTS / "3_kernel_round_trip.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(SHOTS / "FAILED.png"), full_page=True)
            raise
        finally:
            (SHOTS / "console.log").write_text("\n".join(console))
            ctx.close()
    bad = [c for c in console if any(s in c for s in WIDGET_ERRORS)]
    assert not bad, bad
