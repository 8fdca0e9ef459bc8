"""The Board's language and remembered settings in a real browser (headless Chromium, Playwright).

A browser that asks for Japanese gets the page in Japanese, messages included; a language
picked in the menu and a model path typed in are still there after the Board restarts. The
Board is started without `--lang`, through `run_webui`, as `lathe webui` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.board.test_browser import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip, _fill, _free_port, _pick, _shot
from tests.conftest import ROOT

pytestmark = pytest.mark.browser


def _start_board(tmp_path: Path, workdir: Path):
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    env.pop("GRADIO_SHARE", None)
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(tmp_path / "board.log", "a")  # noqa: SIM115 (open while the Board runs; closed by _stop)
    code = f"from lathe.board.app import run_webui; run_webui({str(workdir)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the Board exited:\n" + (tmp_path / "board.log").read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/", log
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the Board did not open its port in 120 s")


def _stop(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.mark.slow  # 40 s with its Board; every language in a browser stays in CI (test_browser_tabs.py), the
# Accept-Language choice and remembered settings in tests/board/test_locales.py and test_user_settings.py
def test_page_follows_the_browser_language_and_remembers_settings(tmp_path):
    sync_playwright = _browser_or_skip()
    workdir = tmp_path / "wd"
    proc, url, log = _start_board(tmp_path, workdir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="ja-JP")
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#train-start:has-text('開始')", timeout=60_000)
            page.wait_for_selector("#f-cutoff_len:has-text('最大長 (cutoff_len)')", timeout=30_000)
            page.click("#train-abort")  # a message in the page's language, not the one it was built in
            page.wait_for_selector("#train-status:has-text('実行中のものはありません')", timeout=30_000)
            _shot(page, "board_ja")
            _pick(page, "lang", "Русский")
            page.wait_for_selector("#train-start:has-text('Запустить')", timeout=30_000)
            _fill(page, "f-model_name_or_path", "/models/remembered")
            deadline = time.time() + 30
            settings = workdir / "user_config.yaml"
            while time.time() < deadline and "/models/remembered" not in (settings.read_text() if settings.exists()
                                                                          else ""):
                time.sleep(0.3)
            assert "lang: ru" in settings.read_text() and "/models/remembered" in settings.read_text()
            browser.close()
    finally:
        _stop(proc, log)

    proc, url, log = _start_board(tmp_path, workdir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="ja-JP")
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#train-start:has-text('Запустить')", timeout=60_000)  # picked beats browser
            box = page.locator("#f-model_name_or_path input, #f-model_name_or_path textarea").first
            deadline = time.time() + 30
            while time.time() < deadline and box.input_value() != "/models/remembered":
                time.sleep(0.3)
            assert box.input_value() == "/models/remembered"
            _shot(page, "board_ru_remembered")
            browser.close()
    finally:
        _stop(proc, log)
