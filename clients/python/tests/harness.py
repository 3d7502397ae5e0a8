"""A real `redline serve` on loopback for the tests: its own SQLite store in a temp dir, port 0
(or the port of an earlier start, to come back where clients expect it), stopped and restarted
at will. The binary is $REDLINE_BIN, else the workspace's debug build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("REDLINE_BIN", ROOT / "target" / "debug" / "redline"))
_LISTENING = re.compile(r"Redline listening on (http://\S+)")


class Server:
    def __init__(self, *args: str):
        self.args = list(args)
        self.data = tempfile.TemporaryDirectory(prefix="redline-py-")
        self.proc = None
        self.url = None
        self.start()

    def start(self, port: int = 0) -> None:
        listen = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(BIN), "--log", "warn", "serve", "--listen", listen, "--data-dir", self.data.name, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # The server prints where it listens once it does: no sleep, no polling.
        for line in self.proc.stdout:
            m = _LISTENING.search(line)
            if m:
                self.url = m.group(1)
                return
        raise RuntimeError(f"{BIN} serve exited ({self.proc.wait()}) before listening")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """Gone at once, as a crash: no graceful shutdown."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def restart(self) -> None:
        self.start(self.port)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
            self.proc.stdout.close()
        self.data.cleanup()

    def page(self, path: str) -> str:
        """A dashboard page or chart (not under /api/v1), as text."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as resp:
            return resp.read().decode()

    def get(self, path: str, token: str | None = None):
        req = urllib.request.Request(f"{self.url}/api/v1{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body, token: str | None = None):
        req = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def series(self, run_id: str, metric: str, token: str | None = None) -> list[tuple[int, float]]:
        from urllib.parse import quote

        got = self.get(f"/runs/{run_id}/series?metric={quote(metric, safe='')}", token)
        return [(p["step"], p["value"]) for p in got["points"]]
