"""A headless Chromium driven over the DevTools protocol, to check that pages render as a reader sees them.

One browser process per :class:`Chromium`; :meth:`Chromium.load` opens a page in a new tab, waits for its
load event, and returns what loaded and what went wrong: uncaught exceptions, console errors, and the
browser's own log errors (a file that failed to load, a Content-Security-Policy violation).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",  # the browser picks a free port and writes it to DevToolsActivePort
    "--remote-debugging-address=127.0.0.1",
]
# every <img> and <video> of the page: whether it loaded, and its intrinsic size
MEDIA_SCRIPT = """JSON.stringify({
  images: Array.from(document.images, i => ({src: i.getAttribute('src'), complete: i.complete,
                                             width: i.naturalWidth, height: i.naturalHeight})),
  videos: Array.from(document.querySelectorAll('video'), v => ({src: v.getAttribute('src'),
          ready: v.readyState, error: v.error ? v.error.code : null, width: v.videoWidth})),
  title: document.title,
})"""


def binary() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageResult:
    images: list[dict[str, Any]]
    videos: list[dict[str, Any]]  # ready: HTMLMediaElement.readyState (>= 1: its metadata loaded)
    errors: list[str]
    title: str


class Chromium:
    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        import websocket  # websocket-client (a dev dependency)

        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="fdl-chromium-"))
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        # no Origin header: Chromium refuses DevTools connections from unlisted origins
        self.socket = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True
        )
        self._id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
            self.socket = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout} s")
            self._events.append(json.loads(self.socket.recv()))

    def _evaluate(self, session: str, script: str) -> Any:
        """The value of a script that returns JSON text, in the page."""
        reply = self._send("Runtime.evaluate", session, expression=script, returnByValue=True)
        return json.loads(reply["result"]["value"])

    def load(self, url: str, settle: float = 0.3) -> PageResult:
        target = self._send("Target.createTarget", url="about:blank")["targetId"]
        session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self._send(f"{domain}.enable", session)
            self._events.clear()
            self._send("Page.navigate", session, url=url)
            self._wait_for("Page.loadEventFired", session)
            time.sleep(settle)  # late console messages
            deadline = time.monotonic() + self.timeout
            while True:  # videos load their metadata after the load event
                media = self._evaluate(session, MEDIA_SCRIPT)
                pending = [v for v in media["videos"] if v["ready"] < 1 and v["error"] is None]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            errors = [_error(e) for e in self._events if e.get("sessionId") == session and _error(e)]
            return PageResult(media["images"], media["videos"], errors, media["title"])
        finally:
            self._send("Target.closeTarget", targetId=target)


def _error(event: dict[str, Any]) -> str | None:
    """The text of an error event (exception, console.error, a failed load or a blocked request)."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "exception: " + str(details.get("exception", {}).get("description") or details.get("text"))
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip()
    return None
