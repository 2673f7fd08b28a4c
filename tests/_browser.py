"""A tiny W3C WebDriver client over the standard library, for Debian's chromium-driver.

Enough for the view tests: open a page, find elements, move/click the pointer, run scripts,
take screenshots, and use Chrome DevTools commands (``cdp``) through chromedriver to block and
record network requests. No Selenium: one HTTP call per action to a local chromedriver.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
# Without these Chromium tries the network (updates, sync, QUIC probes); no GPU here.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]


def available() -> str | None:
    """None when Chromium and its driver are installed, else the reason they are not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not installed (apt-get install -y chromium chromium-driver)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium session (fresh profile) driven through chromedriver."""

    def __init__(self):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="attnjax-chromium-")
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                if self._call("GET", "/status")["ready"]:
                    break
            if time.monotonic() > deadline:
                self.driver.kill()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        options = {
            "binary": CHROMIUM,
            "args": [*FLAGS, f"--user-data-dir={self.profile}"],
        }
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"performance": "ALL"},
        }
        try:
            session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        except BaseException:
            self.close()
            raise
        self.session = f"/session/{session['sessionId']}"
        self.cdp("Network.enable")
        self.cdp("Network.setBlockedURLs", urls=BLOCKED)

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: {error.read().decode()[:500]}") from None

    def call(self, method: str, path: str, body: dict | None = None):
        return self._call(method, self.session + path, body)

    def cdp(self, cmd: str, **params):
        return self.call("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def get(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        """``script`` is a function body; ``arguments[i]`` are ``args``; returns its value."""
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> dict:
        return self.call("POST", "/element", {"using": "css selector", "value": css})

    def find_all(self, css: str) -> list[dict]:
        return self.call("POST", "/elements", {"using": "css selector", "value": css})

    def move(self, element: dict, x: int = 0, y: int = 0) -> None:
        """Pointer to ``(x, y)`` px from the centre of ``element``."""
        self._pointer([{"type": "pointerMove", "origin": element, "x": int(x), "y": int(y)}])

    def click(self, element: dict, x: int = 0, y: int = 0) -> None:
        self._pointer([
            {"type": "pointerMove", "origin": element, "x": int(x), "y": int(y)},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerUp", "button": 0},
        ])  # fmt: skip

    def _pointer(self, actions: list[dict]) -> None:
        source = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}}
        self.call("POST", "/actions", {"actions": [{**source, "actions": actions}]})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", "/screenshot"))

    def requests(self) -> list[str]:
        """URLs of every request the page started since the last call (DevTools log)."""
        urls = []
        for entry in self.call("POST", "/se/log", {"type": "performance"}):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("DELETE", "")
        self.driver.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.driver.wait(timeout=10)
        if self.driver.poll() is None:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
