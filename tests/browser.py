"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for tests that assert what a person
sees in a page: open a URL, wait until a JavaScript condition holds, read values off the page. The protocol runs
over a WebSocket through aiohttp (it comes with Ray); nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from ports import free_port


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def answers(url: str, timeout_s: float) -> bool:
    """Whether `url` answers an HTTP GET within `timeout_s` (asked again every 0.3 s until then)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            time.sleep(0.3)
    return False


class Browser:
    """One headless Chromium for a test (`with Browser() as b`); `b.page(url, until)` opens a tab, waits for the
    JavaScript expression `until` to be truthy, and returns `read` (a JavaScript expression) evaluated there."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="aot-chromium-")
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-site-isolation-trials", "--disable-features=IsolateOrigins,site-per-process",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not answers(f"http://127.0.0.1:{self.port}/json/version", 60):
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def page(self, url: str, until: str, read: str, timeout_s: float = 60.0, frame: bool = False) -> Any:
        """With `frame`, `until` and `read` run inside the page's first child frame (an iframe, however
        sandboxed: through the DevTools protocol, as the person looking at it sees it; site isolation is off so
        that the frame is in the page's own frame tree)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(req, timeout=10).read())
        try:
            return asyncio.run(self._wait(target["webSocketDebuggerUrl"], url, until, read, timeout_s, frame))
        finally:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=10)

    async def _wait(self, ws_url: str, url: str, until: str, read: str, timeout_s: float, frame: bool) -> Any:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: Any) -> dict:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == n:
                        return data.get("result", {})
                return {}

            async def evaluate(expression: str) -> Any:
                context = {}
                if frame:  # a world of its own in the frame's document as it is now (it loads after the page)
                    children = (await call("Page.getFrameTree")).get("frameTree", {}).get("childFrames", [])
                    world = await call("Page.createIsolatedWorld", frameId=children[0]["frame"]["id"]) \
                        if children else {}
                    if "executionContextId" not in world:
                        return None
                    context["contextId"] = world["executionContextId"]
                got = await call("Runtime.evaluate", expression=expression, returnByValue=True, **context)
                return got.get("result", {}).get("value")

            await call("Page.navigate", url=url)

            deadline = time.time() + timeout_s
            while time.time() < deadline:
                if await evaluate(f"Boolean({until})"):
                    return await evaluate(read)
                await asyncio.sleep(0.5)
            text = await evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
            raise AssertionError(f"the page never showed {until!r}; it showed: {text!r}")
