"""Calls to a Redline server's HTTP API v1 (standard library only), and what each kind of failure
means for the caller: retry (after a backoff, or when the server says), or give up because no retry
can succeed."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

#: The longest a single call may take, in seconds.
CALL_TIMEOUT = 30.0
#: The longest `Retry-After` honoured: a server asking for more is retried after this.
MAX_RETRY_AFTER = 60.0


@dataclass
class CallError(Exception):
    """A call that failed: `status` is None when no answer came (the server is down)."""

    status: int | None
    message: str
    retry_after: float | None = None

    def __str__(self) -> str:
        if self.status is None:
            return f"no answer: {self.message}"
        return f"it answered {self.status}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Server errors, timeouts and rate limits pass; other refusals are final."""
        return self.status is None or self.status in (408, 429) or self.status >= 500

    def explain(self, url: str) -> str:
        if self.status in (401, 403):
            return f"the server at {url} refused the token ({self})"
        if self.status is None:
            return f"the server at {url} is unreachable ({self})"
        return f"the server at {url} refused the run ({self})"


def encode_value(v: float) -> float | str:
    """A metric value as the API takes it: NaN and ±Inf travel as strings, since JSON has no
    literal for them."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


class Api:
    """The run endpoints of one server, as one client (`url`, optional bearer `token`)."""

    def __init__(self, url: str, run_id: str, token: str | None = None):
        self.url = url.rstrip("/")
        self.run_id = run_id
        self.token = token
        self.base = f"{self.url}/api/v1/runs/{urllib.parse.quote(run_id, safe='')}"

    def request(self, method: str, path: str = "", body=None, timeout: float = CALL_TIMEOUT, headers=None):
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        return req, max(timeout, 0.001)

    def call(self, method: str, path: str = "", body=None, timeout: float = CALL_TIMEOUT):
        """One call; its JSON answer (or None for an empty one). Raises CallError."""
        req, timeout = self.request(method, path, body, timeout)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
        except urllib.error.HTTPError as e:
            raise CallError(e.code, _error_message(e.read()), _retry_after(e.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CallError(None, str(reason)) from None
        return json.loads(text) if text.strip() else None

    def open_run(self, create: dict, timeout: float = CALL_TIMEOUT):
        return self.call("PUT", "", create, timeout)


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, the form Redline sends (an HTTP date falls back to the backoff)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or seconds < 0 else min(seconds, MAX_RETRY_AFTER)
