"""A real headless browser for the tests: Debian's Chromium, driven by chromedriver.

W3C WebDriver over HTTP, from the standard library (no Selenium): start
chromedriver on a free loopback port, open a session whose Chromium runs
headless with a new empty profile and no background traffic, then load
pages, find elements, click and read, as a person would. scripts/setup
installs `chromium` and `chromium-driver`.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.dovecot import free_port

ARGS = [
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
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
"""The W3C key of an element reference in WebDriver answers."""


def need(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed; scripts/setup installs it", pytrace=False)
    return found


class Browser:
    """One Chromium session; every wait polls a condition with a deadline."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.log = profile.parent / "chromedriver.log"
        self.proc = subprocess.Popen(
            [need("chromedriver"), f"--port={self.port}", f"--log-path={self.log}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self._until(self._ready, 30, "chromedriver did not start")
        options = {"binary": need("chromium"), "args": [*ARGS, f"--user-data-dir={profile}"]}
        answer = self._call(
            "POST",
            "/session",
            {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}},
        )
        self.session = f"/session/{answer['sessionId']}"

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status").get("ready"))
        except (OSError, urllib.error.URLError):
            return False

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)["value"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"WebDriver {method} {path}: {err.read().decode()}") from None

    @staticmethod
    def _until(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(what)
            time.sleep(0.05)

    def get(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def find(self, css: str) -> str:
        found = self._call(
            "POST", f"{self.session}/element", {"using": "css selector", "value": css}
        )
        return found[ELEMENT]

    def click(self, element: str) -> None:
        self._call("POST", f"{self.session}/element/{element}/click", {})

    def text(self, element: str) -> str:
        return self._call("GET", f"{self.session}/element/{element}/text")

    @property
    def title(self) -> str:
        return self._call("GET", f"{self.session}/title")

    def wait_title(self, title: str, timeout: float = 20) -> None:
        self._until(lambda: self.title == title, timeout, f"the page never got the title {title!r}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))
        return path

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
