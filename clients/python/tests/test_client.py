"""The client against a real `redline serve` over loopback: delivery, bad input, outages, signals,
offline spools and `redline-push` (standard library only)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import redline_client
from redline_client._api import MAX_RETRY_AFTER, CallError, _retry_after
from redline_client.push import main as push_main
from redline_client.run import Run, RefusedError

from harness import BIN, Server

logging.getLogger("redline_client").setLevel(logging.ERROR)


def wait_for(what, check, limit=30.0):
    """Waits for something another thread or process does; the limit only bounds a failure."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {limit} s")


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="redline-client-")
        self.server = Server()

    def tearDown(self):
        self.server.close()
        self.tmp.cleanup()

    def folder(self, name):
        return Path(self.tmp.name) / name

    def test_steps_arrive_with_non_finite_values_and_the_run_ends_as_said(self):
        run = Run(
            self.server.url, "c-1", name="first", project="p", tags=["a", "b"],
            config={"lr": 1e-3, "path": Path("/x")}, spool_dir=self.folder("c-1"),
        )
        for step in range(1, 6):
            run.log(step, {"loss": 1.0 / step, "x": [0.0, math.nan, math.inf, -math.inf, 5][step - 1]})
        delivery = run.finish("stopped", "by hand")
        self.assertTrue(delivery.complete, delivery)
        self.assertTrue(delivery.finished)
        self.assertEqual(self.server.series("c-1", "loss"), [(s, 1.0 / s) for s in range(1, 6)])
        self.assertEqual(
            [v for _, v in self.server.series("c-1", "x")], [0.0, "NaN", "Infinity", "-Infinity", 5.0]
        )
        got = self.server.get("/runs/c-1")
        self.assertEqual((got["name"], got["project"], got["tags"]), ("first", "p", ["a", "b"]))
        self.assertEqual(got["config"], {"lr": 1e-3, "path": "/x"})
        self.assertEqual((got["status"], got["status_reason"]), ("stopped", "by hand"))

    def test_bad_input_is_refused_at_the_call_naming_the_problem(self):
        with self.assertRaisesRegex(ValueError, "run_id 'a/b' is not valid"):
            Run(self.server.url, "a/b", spool_dir=self.folder("x"))
        run = Run(self.server.url, "c-bad", spool_dir=self.folder("c-bad"))
        with self.assertRaisesRegex(ValueError, "metric name 'bad name' is not valid"):
            run.log(1, {"bad name": 1.0})
        with self.assertRaisesRegex(ValueError, "metric 'loss' at step 1: 'high' is not a number"):
            run.log(1, {"loss": "high"})
        with self.assertRaisesRegex(ValueError, "step -1 is not valid"):
            run.log(-1, {"loss": 1.0})
        with self.assertRaisesRegex(ValueError, "status 'done' is not one of"):
            run.finish("done")
        # Nothing half-written: the refused calls left no line, and the run goes on.
        run.log(1, {"loss": 0.5})
        self.assertTrue(run.finish().complete)
        self.assertEqual(self.server.series("c-bad", "loss"), [(1, 0.5)])
        with self.assertRaisesRegex(RuntimeError, "finished"):
            run.log(2, {"loss": 0.4})

    def test_a_refused_token_fails_at_once(self):
        self.server.close()
        self.server = Server("--token", "right-token-0123456789")
        with self.assertRaisesRegex(RefusedError, "refused the token"):
            Run(self.server.url, "c-tok", token="wrong", spool_dir=self.folder("c-tok"))
        run = Run(self.server.url, "c-tok", token="right-token-0123456789", spool_dir=self.folder("c-tok"))
        run.log(1, {"loss": 1.0})
        self.assertTrue(run.finish().complete)
        self.assertEqual(self.server.series("c-tok", "loss", "right-token-0123456789"), [(1, 1.0)])

    def test_a_server_killed_and_restarted_mid_run_loses_and_duplicates_nothing(self):
        run = Run(self.server.url, "c-outage", spool_dir=self.folder("c-outage"))
        for step in range(1, 101):
            if step == 30:
                self.server.kill()
            if step == 70:
                self.server.restart()
            run.log(step, {"loss": step * 0.5})
        delivery = run.finish()
        self.assertTrue(delivery.complete, delivery)
        self.assertEqual(self.server.series("c-outage", "loss"), [(s, s * 0.5) for s in range(1, 101)])
        # The spool holds each step once and the offset is past all of them.
        lines = (self.folder("c-outage") / "metrics.jsonl").read_text().splitlines()
        self.assertEqual([json.loads(x)["step"] for x in lines], list(range(1, 101)))
        self.assertEqual(redline_client.run.Spool(self.folder("c-outage")).undelivered(), 0)

    def test_a_run_resumed_after_a_crash_mid_write_sends_every_whole_step(self):
        folder = self.folder("c-torn")
        run = Run(self.server.url, "c-torn", spool_dir=folder)
        run.log(1, {"loss": 1.0})
        self.assertTrue(run.finish().complete)
        with open(folder / "metrics.jsonl", "a") as f:
            f.write('{"step": 2, "metr')  # the crash
        resumed = Run(self.server.url, "c-torn", spool_dir=folder)
        resumed.log(3, {"loss": 0.5})
        self.assertTrue(resumed.finish().complete)
        self.assertEqual(self.server.series("c-torn", "loss"), [(1, 1.0), (3, 0.5)])

    def test_a_dead_server_leaves_the_steps_in_the_spool_and_push_delivers_them_once(self):
        url = self.server.url
        self.server.kill()
        folder = self.folder("c-dead")
        run = Run(url, "c-dead", tags=["late"], spool_dir=folder, finish_grace=0.5)
        for step in range(1, 4):
            run.log(step, {"loss": float(step)})
        delivery = run.finish("completed")
        self.assertEqual((delivery.undelivered, delivery.finished, delivery.retryable), (3, False, True))
        self.assertIn("unreachable", delivery.problem)
        self.server.restart()
        self.assertEqual(push_main([str(folder)]), 0)
        self.assertEqual(self.server.series("c-dead", "loss"), [(1, 1.0), (2, 2.0), (3, 3.0)])
        got = self.server.get("/runs/c-dead")
        self.assertEqual((got["status"], got["tags"]), ("completed", ["late"]))
        # A second push has nothing left to send.
        self.assertEqual(redline_client.run.Spool(folder).undelivered(), 0)
        self.assertEqual(push_main([str(folder)]), 0)

    def test_an_offline_run_is_pushed_later_by_redline_push_and_by_the_rust_cli(self):
        for runner, run_id in (("python", "c-off-py"), ("rust", "c-off-rs")):
            folder = self.folder(run_id)
            run = Run(None, run_id, name=run_id, spool_dir=folder)
            run.log(1, {"loss": 2.0, "eval/score": 0.5})
            run.log(2, {"loss": 1.0})
            delivery = run.finish("completed")
            self.assertEqual(delivery.undelivered, 2)
            if runner == "python":
                self.assertEqual(push_main([str(folder), "--server", self.server.url]), 0)
            else:
                subprocess.run([str(BIN), "push", str(folder), "--server", self.server.url], check=True,
                               capture_output=True)
            self.assertEqual(self.server.series(run_id, "loss"), [(1, 2.0), (2, 1.0)], runner)
            self.assertEqual(self.server.get(f"/runs/{run_id}")["status"], "completed", runner)
        # And a push with no server known says so.
        folder = self.folder("c-off-none")
        Run(None, "c-off-none", spool_dir=folder).finish()
        self.assertEqual(push_main([str(folder)]), 2)

    def test_signals_arrive_once_and_their_answers_are_recorded(self):
        run = Run(self.server.url, "c-sig", spool_dir=self.folder("c-sig"))
        run.log(1, {"loss": 1.0})
        stop = self.server.post("/runs/c-sig/signals", {"kind": "stop", "reason": "enough", "keep_step": 1})
        beta = self.server.post(
            "/runs/c-sig/signals", {"kind": "set_hparam", "name": "beta", "value": 0.2, "reason": "steer"}
        )
        got = []
        wait_for("both signals", lambda: got.extend(run.pending_signals()) or len(got) == 2)
        self.assertEqual([s.id for s in got], [stop["id"], beta["id"]])
        self.assertEqual((got[0].kind, got[0].keep_step, got[0].reason), ("stop", 1, "enough"))
        self.assertEqual((got[1].kind, got[1].name, got[1].value), ("set_hparam", "beta", 0.2))
        run.log(2, {"loss": 0.9})  # the ingest answer repeats unanswered signals: still handed out once
        run.ack(got[1], 3, refused="this trainer has no beta")
        run.ack(got[0], 2)
        self.assertTrue(run.finish("stopped").complete)
        self.assertEqual(run.pending_signals(), [])
        signals = {s["id"]: s for s in self.server.get("/runs/c-sig/signals?pending=false")["signals"]}
        self.assertEqual((signals[stop["id"]]["applied_step"], signals[stop["id"]]["refused"]), (2, None))
        self.assertEqual(signals[beta["id"]]["refused"], "this trainer has no beta")

    def test_retry_after_is_honoured_up_to_the_cap_and_final_refusals_are_not_retried(self):
        self.assertEqual(_retry_after(" 7 "), 7.0)
        self.assertEqual(_retry_after("3600"), MAX_RETRY_AFTER)
        self.assertIsNone(_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"))
        self.assertIsNone(_retry_after("-1"))
        for status in (None, 408, 429, 500, 503):
            self.assertTrue(CallError(status, "x").retryable, status)
        for status in (400, 401, 403, 404, 409, 422):
            self.assertFalse(CallError(status, "x").retryable, status)

    def test_it_installs_offline_from_the_checkout(self):
        with tempfile.TemporaryDirectory() as venv:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
            target = Path(venv) / "site"
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                 "--target", str(target), str(Path(__file__).resolve().parents[1])],
                check=True,
            )
            self.assertTrue((target / "redline_client" / "run.py").is_file())
            self.assertTrue(list(target.glob("redline_client-*.dist-info/entry_points.txt")))

    def test_the_build_backend_reads_pyproject_on_python_3_10_as_tomllib_does(self):
        import tomllib

        root = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(root / "_build"))
        try:
            import redline_build
        finally:
            sys.path.pop(0)
        text = (root / "pyproject.toml").read_text()
        self.assertEqual(redline_build._read_project_table(text), tomllib.loads(text)["project"])


if __name__ == "__main__":
    unittest.main()
