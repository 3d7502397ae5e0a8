"""A run on a Redline server, streamed from a training loop that must never wait for the network.

`Run.log` appends the step to the run folder's spool (`metrics.jsonl`) and returns. A sender
thread ships the spool's unsent tail in batches and moves `metrics.jsonl.sent` past what the
server took, so a server that is down, or a process that restarts, resends from there; resending
is safe because ingest is idempotent. Signals (stop, checkpoint, set a hyperparameter) arrive in
ingest answers and on the run's event stream; the loop takes them with `pending_signals` at step
boundaries and answers each with `ack`, as applied or as refused.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ._api import CALL_TIMEOUT, Api, CallError, encode_value
from .spool import Spool

log = logging.getLogger("redline_client")

#: How long, by default, `finish` waits without progress before leaving the rest in the spool.
FINISH_GRACE = 30.0
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
#: How often an idle sender looks at the spool without being woken.
IDLE = 1.0
#: The server's limit on free text (reasons): longer ones are cut, marked with an ellipsis.
MAX_TEXT = 256
#: The largest step the API takes (2^53 − 1: exact in every JSON reader).
MAX_STEP = 2**53 - 1

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_METRIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")


@dataclass(frozen=True)
class Signal:
    """A signal from the server: `kind` is "stop", "checkpoint" or "set_hparam"."""

    id: int
    kind: str
    name: str | None = None
    value: float | None = None
    keep_step: int | None = None
    reason: str = ""
    source_rule: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> Signal:
        return cls(
            id=int(d["id"]),
            kind=d["kind"],
            name=d.get("name"),
            value=d.get("value"),
            keep_step=d.get("keep_step"),
            reason=d.get("reason") or "",
            source_rule=d.get("source_rule"),
        )


@dataclass
class Delivery:
    """What reached the server by the time `finish` returned."""

    #: Steps in the spool the server has not taken.
    undelivered: int
    #: Whether the server recorded how the run ended.
    finished: bool
    #: Why delivery stopped short; None when everything arrived.
    problem: str | None = None
    #: Whether trying again later can help (False when the token or the run was refused).
    retryable: bool = True

    @property
    def complete(self) -> bool:
        return self.problem is None


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run_id {run_id!r} is not valid: 1 to 64 ASCII letters, digits and _ - ., starting with a letter or digit"
        )
    return run_id


def _fit(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def step_record(step: int, metrics: dict, when: float | None = None) -> dict:
    """One step as the API takes it, checked here so that one bad value is an error at the call
    that made it, not a batch the server refuses later (which would hold back every step behind
    it)."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step {step!r} is not valid: an integer from 0 to 2^53 - 1")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _METRIC.fullmatch(name):
            raise ValueError(
                f"metric name {name!r} is not valid: 1 to 128 ASCII letters, digits and _ - . /, "
                "starting with a letter or digit"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {name!r} at step {step}: {value!r} is not a number") from None
        out[name] = encode_value(number)
    record = {"step": step, "metrics": out}
    if when is not None:
        record["time"] = when
    return record


class Run:
    """Creates (or resumes) run `run_id` on the server at `server` and streams its steps.

    `server=None` is offline: steps are only written to the spool, for `redline-push` later.
    `spool_dir` is the run folder (default `redline-runs/RUN_ID`); a folder with an earlier spool
    of the same run resumes it, sending what was left. A refused token or run raises at once; an
    unreachable server is logged once and training goes on, steps waiting in the spool.
    """

    def __init__(
        self,
        server: str | None,
        run_id: str,
        *,
        name: str | None = None,
        project: str | None = None,
        tags=(),
        config: dict | None = None,
        rules=None,
        token: str | None = None,
        spool_dir=None,
        finish_grace: float = FINISH_GRACE,
    ):
        self.run_id = check_run_id(run_id)
        self.server = server.rstrip("/") if server else None
        self.dir = Path(spool_dir) if spool_dir is not None else Path("redline-runs") / run_id
        self.spool = Spool(self.dir)
        self.finish_grace = finish_grace
        create: dict = {"tags": list(tags)}
        if name is not None:
            create["name"] = name
        if project is not None:
            create["project"] = project
        if config is not None:
            create["config"] = json.loads(json.dumps(config, default=str))
        if rules is not None:
            create["rules"] = [rules] if isinstance(rules, str) else list(rules)
        self.create = create
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: dict[int, Signal] = {}
        self._taken: set[int] = set()
        self._answers: list[tuple[int, dict]] = []
        self._ending: dict | None = None
        self._finishing = False
        self._stop = threading.Event()
        self._delivery: Delivery | None = None
        self._api = Api(self.server, run_id, token) if self.server else None
        created = self._check_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spool.write_record({"run_id": run_id, "server": self.server, "create": create, "ended": None})
        self._file = open(self.spool.log, "a+", encoding="utf-8")
        # A process that died mid-write left a torn last line: end it, so the steps appended now
        # are lines of their own (the torn one is passed over, never sent).
        if self._file.tell() > 0:
            self._file.seek(self._file.tell() - 1)
            if self._file.read(1) != "\n":
                self._file.write("\n")
        self._sender = self._listener = None
        if self._api is not None:
            self._sender = threading.Thread(target=self._send_loop, args=(created,), name="redline-sender", daemon=True)
            self._listener = threading.Thread(target=self._listen, name="redline-signals", daemon=True)
            self._sender.start()
            self._listener.start()

    # ------------------------------------------------------------------ the training loop's side

    def log(self, step: int, metrics: dict, *, when: float | None = None) -> None:
        """Appends one step to the spool and wakes the sender. Never waits for the network."""
        line = json.dumps(step_record(step, metrics, time.time() if when is None else when), allow_nan=False)
        with self._lock:
            if self._finishing:
                raise RuntimeError(f"run {self.run_id} is finished: no more steps can be logged")
            self._file.write(line + "\n")
            self._file.flush()
            self._wake.notify()

    def pending_signals(self) -> list[Signal]:
        """Signals received since the last call, oldest first, each handed out once."""
        with self._lock:
            fresh = sorted((s for i, s in self._inbox.items() if i not in self._taken), key=lambda s: s.id)
            self._taken.update(s.id for s in fresh)
            return fresh

    def ack(self, signal: Signal | int, step: int, *, refused: str | None = None) -> None:
        """Tells the server that `signal` took effect at `step` or, with `refused`, why the trainer
        could not apply it (the server then keeps it as refused, never as applied)."""
        sid = signal.id if isinstance(signal, Signal) else int(signal)
        body: dict = {"step": int(step)}
        if refused is not None:
            body["refused"] = _fit(refused)
        with self._lock:
            self._answers.append((sid, body))
            self._wake.notify()

    def finish(self, status: str = "completed", reason: str | None = None) -> Delivery:
        """Ends the run: sends what is left and how it ended, giving up once `finish_grace` passes
        without progress. What could not be sent stays in the spool, and this says how to send it."""
        if status not in ("completed", "failed", "stopped"):
            raise ValueError(f"status {status!r} is not one of completed, failed, stopped")
        return self._close({"status": status, "reason": None if reason is None else _fit(reason)})

    def deliver(self) -> Delivery:
        """Sends what is left without ending the run (it stays running): for a spool whose
        training was interrupted."""
        return self._close(None)

    def _close(self, ending: dict | None) -> Delivery:
        with self._lock:
            if self._finishing:
                raise RuntimeError(f"run {self.run_id} is finished already")
            self._finishing = True
            self._ending = ending
            self._file.close()
            self._wake.notify()
        if ending is not None:
            record = self.spool.read_record()
            record["ended"] = ending
            self.spool.write_record(record)
        if self._sender is None:
            return Delivery(self.spool.undelivered(), False, "offline: nothing was sent", True)
        self._sender.join()
        self._stop.set()
        delivery = self._delivery
        said = leftover(delivery, self.server, self.dir)
        if said:
            log.warning("%s", said)
        return delivery

    @property
    def finished(self) -> bool:
        """Whether `finish` (or `deliver`) was called: no more steps can be logged."""
        return self._finishing

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if not self._finishing:
            self.finish("completed" if kind is None else "failed", None if kind is None else repr(value))

    # ------------------------------------------------------------------ the sender's side

    def _check_server(self) -> bool:
        """Creates or resumes the run before anything else, so a wrong token fails now instead
        of after hours of training. False: unreachable for now, retried by the sender."""
        if self._api is None:
            return False
        try:
            self._api.open_run(self.create)
            return True
        except CallError as e:
            if not e.retryable:
                raise RefusedError(e.explain(self.server)) from None
            log.warning(
                "redline: %s; training goes on: steps are kept in %s and sent once it answers",
                e.explain(self.server),
                self.spool.log,
            )
            return False

    def _send_loop(self, created: bool) -> None:
        backoff = FIRST_BACKOFF
        # No call before this after a failure: `log` wakes the sender at every step, and must not
        # cut short a backoff or the server's Retry-After.
        retry_at = 0.0
        # Set once finishing: the grace, renewed by each bit of progress.
        deadline = None
        said = None  # the retryable failure last logged, so a long outage is said once
        blocked = None  # a refusal no retry can mend: nothing more is sent
        problem, finished = None, False
        while True:
            with self._lock:
                finishing = self._finishing
            now = time.monotonic()
            if finishing and deadline is None:
                deadline = now + self.finish_grace
            if blocked is not None:
                if finishing:
                    break
                wait = IDLE
            elif now < retry_at:
                wait = retry_at - now
            else:
                timeout = CALL_TIMEOUT if deadline is None else min(CALL_TIMEOUT, max(deadline - now, 0.001))
                try:
                    if not created:
                        self._api.open_run(self.create, timeout)
                        created = True
                    progress = self._ship(timeout)
                    if not progress and finishing:
                        if self._ending is not None:
                            self._api.call("POST", "/finish", self._ending, timeout)
                            finished = True
                        problem = None
                        break
                    if said is not None:
                        log.warning("redline: the server at %s answers again; sending the steps kept meanwhile", self.server)
                    said, problem, backoff = None, None, FIRST_BACKOFF
                    if progress:
                        if deadline is not None:
                            deadline = time.monotonic() + self.finish_grace
                        continue
                    wait = IDLE
                except CallError as e:
                    problem = e.explain(self.server)
                    if not e.retryable:
                        blocked = problem
                        log.error("redline: %s; nothing more is sent (the spool keeps it)", problem)
                        continue
                    if said != problem:
                        log.warning("redline: %s; retrying", problem)
                        said = problem
                    wait = e.retry_after if e.retry_after is not None else backoff
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    retry_at = time.monotonic() + wait
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    problem = problem or f"the server at {self.server} made no progress within {self.finish_grace:g} s"
                    break
                wait = min(wait, left)
            with self._lock:
                # A finish request since the top of the loop is news: act on it at once.
                if self._finishing == finishing:
                    self._wake.wait(wait)
        self._delivery = Delivery(self.spool.undelivered(), finished, problem, blocked is None)

    def _ship(self, timeout: float) -> bool:
        """Sends the next batch of the spool, then the queued answers; whether anything moved."""
        offset = self.spool.offset()
        steps, end = self.spool.pending(offset)
        progress = False
        if end != offset:
            if steps:
                answer = self._api.call("POST", "/steps", {"steps": steps}, timeout) or {}
                self._take(answer.get("signals", []))
            self.spool.save_offset(end)
            progress = True
        while True:
            with self._lock:
                if not self._answers:
                    break
                sid, body = self._answers[0]
            try:
                self._api.call("POST", f"/signals/{sid}/ack", body, timeout)
            except CallError as e:
                # Unknown, answered already, or an answer the server never takes: nothing left to
                # say, and no reason to hold back the steps behind it.
                if e.status not in (400, 404, 409, 413, 422):
                    raise
                log.warning("redline: answering signal %s failed for good (%s)", sid, e)
            with self._lock:
                self._answers.pop(0)
            progress = True
        return progress

    def _take(self, signals) -> None:
        with self._lock:
            for d in signals:
                s = Signal.from_json(d)
                self._inbox.setdefault(s.id, s)

    def _listen(self) -> None:
        """Follows the run's signal stream (Server-Sent Events), reconnecting after the last event
        id seen, so a signal reaches the loop even when no ingest answer carries it."""
        last, backoff = 0, 0.2
        while not self._stop.is_set():
            req, _ = self._api.request("GET", "/signals/stream", headers={"Last-Event-ID": str(last)})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    backoff = 0.2
                    for raw in resp:
                        if self._stop.is_set():
                            return
                        line = raw.decode("utf-8", "replace").strip()
                        if line.startswith("data:"):
                            try:
                                d = json.loads(line[5:])
                                self._take([d])
                                last = max(last, int(d["id"]))
                            except (ValueError, KeyError, TypeError):
                                pass
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


class RefusedError(RuntimeError):
    """The server refused the token or the run: no retry can succeed."""


def leftover(delivery: Delivery, url: str | None, folder: Path) -> str | None:
    """What a delivery that stopped short left behind, and how to send it; None when nothing is."""
    if delivery.problem is None:
        return None
    how = f"`redline-push {folder}`" + ("" if delivery.retryable else " --token TOKEN (a token the server accepts)")
    if delivery.undelivered:
        n = delivery.undelivered
        return (
            f"redline: {delivery.problem}.\nredline: {n} step{'s were' if n != 1 else ' was'} not delivered to {url}; "
            f"kept in {folder}/metrics.jsonl; {how} sends {'them' if n != 1 else 'it'}."
        )
    return f"redline: {delivery.problem}.\nredline: every step reached {url}, but not how the run ended; {how} sends it."

