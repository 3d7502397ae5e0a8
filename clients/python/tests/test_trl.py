"""TRL's real `DPOTrainer` (CPU, the tiny Llama fixture) with `RedlineDPOTrainer` and
`RedlineCallback` against a real `redline serve`: the metrics equal Redline's own trainer's, every
step arrives, a preset stop ends training with the kept checkpoint on disk, signals steer β and
the NLL weight, and a server killed mid-run loses nothing."""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import unittest
from pathlib import Path

import torch
from datasets import load_dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig

from redline_client.hf import RedlineCallback, metric_name
from redline_client.trl import RedlineDPOTrainer, generation_metrics, overoptimisation_metrics

from harness import BIN, ROOT, Server

FIXTURE = ROOT / "trainer" / "tests" / "fixtures" / "tiny-llama"
#: What the mixin adds: compared with Redline's trainer within 1e-4 relative.
COMPARED = [
    f"{m}/{s}" for m in ("logps_mean", "topk_mass", "topk_entropy", "top1_prob") for s in ("chosen", "rejected")
] + ["kl/chosen"]

torch.set_num_threads(1)
logging.getLogger("redline_client").setLevel(logging.ERROR)
logging.getLogger("transformers").setLevel(logging.ERROR)


class InOrder(RedlineDPOTrainer):
    """Batches in file order, as `redline train --shuffle false` takes them."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def trainer(out: Path, steps: int, lr: float, callbacks, evaluate: bool = False) -> InOrder:
    load = lambda: AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32)  # noqa: E731
    data = lambda split: load_dataset("json", data_files=str(FIXTURE / f"{split}.jsonl"))["train"]  # noqa: E731
    evaluation = dict(eval_strategy="steps", eval_steps=5, per_device_eval_batch_size=32) if evaluate else {}
    cfg = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, beta=0.1, report_to=[],
        save_strategy="steps", save_steps=5, use_cpu=True, seed=0, max_length=64, bf16=False,
        weight_decay=0.0, max_grad_norm=1.0, disable_tqdm=True, dataloader_num_workers=0, **evaluation,
    )
    t = InOrder(
        model=load(), ref_model=load(), args=cfg, train_dataset=data("train"),
        # Held-out pairs with a gold answer, so evaluation also scores the policy's samples.
        eval_dataset=data("eval").map(lambda r: {"answer": r["chosen"].strip(" .")}) if evaluate else None,
        processing_class=AutoTokenizer.from_pretrained(FIXTURE), callbacks=callbacks,
    )
    t.remove_callback(PrinterCallback)  # every step's logs on stdout
    return t


class TakeStepMetrics(TrainerCallback):
    """What RedlineCallback sends per step, kept here instead."""

    def __init__(self):
        self.trainer, self.steps = None, {}

    def on_step_end(self, args, state, control, **kw):
        self.steps[state.global_step] = self.trainer.redline_take_step_metrics()


class At(TrainerCallback):
    """Runs `actions[step]` at the end of that step, in the training loop."""

    def __init__(self, actions):
        self.actions = actions

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in self.actions:
            self.actions[state.global_step]()


class TrlTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="redline-trl-")
        self.out = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_the_metrics_equal_redlines_own_trainer_on_the_same_batches(self):
        steps = 3
        subprocess.run(
            [str(BIN), "--log", "warn", "train", "--model", str(FIXTURE), "--batch-size", "8", "--lr", "1e-3",
             "--schedule", "constant", "--max-steps", str(steps), "--shuffle", "false", "--max-length", "64",
             "--eval-every", "0", "--checkpoint-every", "0", "--output-dir", str(self.out / "redline")],
            check=True, capture_output=True,
        )
        ours = {
            r["step"]: r["metrics"]
            for r in map(json.loads, (self.out / "redline" / "metrics.jsonl").read_text().splitlines())
        }
        take = TakeStepMetrics()
        t = trainer(self.out / "trl", steps, 1e-3, [take])
        take.trainer = t
        t.train()
        for step in range(1, steps + 1):
            theirs = take.steps[step]
            for name in COMPARED + ["beta", "nll_alpha"]:
                a, b = ours[step][name], theirs[name]
                self.assertLessEqual(abs(a - b), 1e-4 * max(abs(a), abs(b)) + 1e-6, f"step {step} {name}: {a} vs {b}")

    def test_a_label_free_preset_stops_trl_and_the_kept_checkpoint_is_on_disk(self):
        server = Server()
        self.addCleanup(server.close)
        callback = RedlineCallback(server.url, "trl-stop", rules=["label-free"], tags=["trl"])
        t = trainer(self.out, 120, 1e-2, [callback], evaluate=True)
        t.train()
        run = server.get("/runs/trl-stop")
        self.assertEqual(run["status"], "stopped", run)
        [event] = [e for e in server.get("/runs/trl-stop/events")["events"] if e["action"] == "stop"]
        self.assertEqual(event["rule"], "held-out-likelihood-drop")
        [signal] = server.get("/runs/trl-stop/signals?pending=false")["signals"]
        # TRL stopped at the step boundary where it took the signal, after the firing step.
        self.assertEqual(signal["applied_step"], t.state.global_step)
        self.assertGreater(t.state.global_step, event["step"])
        self.assertLess(t.state.global_step, 120)
        stop = json.loads((self.out / "redline-stop.json").read_text())
        self.assertEqual((stop["signal"], stop["keep_step"]), (signal["id"], signal["keep_step"]))
        self.assertLessEqual(stop["kept_step"], signal["keep_step"])
        self.assertTrue((Path(stop["kept_checkpoint"]) / "model.safetensors").is_file())
        self.assertEqual(t.state.best_model_checkpoint, stop["kept_checkpoint"])
        # Every step arrived with the metrics the presets read, training and held-out.
        steps = list(range(1, t.state.global_step + 1))
        for name in ["loss", "rewards/margins", "grad_norm"] + COMPARED:
            self.assertEqual([s for s, _ in server.series("trl-stop", name)], steps, name)
        for name in ("eval/logps_mean/chosen", "eval/rewards/margins", "topk_entropy/generated",
                     "topk_mass/generated", "eval/generated_tokens", "eval/score"):
            evals = server.series("trl-stop", name)
            self.assertEqual([s for s, _ in evals], list(range(5, t.state.global_step + 1, 5)), name)
        self.assertTrue(all(0 <= v <= 1 for _, v in server.series("trl-stop", "eval/score")))
        # The run page draws the charts a Redline run gets, and the stop is marked on them.
        page = server.page("/runs/trl-stop")
        for chart in ("loss", "rewards", "logps_mean", "topk_entropy", "topk_mass", "top1_prob", "kl", "beta",
                      "nll_alpha", "eval/logps_mean/chosen", "eval/score"):
            self.assertIn("<svg", server.page(f"/runs/trl-stop/chart.svg?chart={chart}"), chart)
        self.assertIn("held-out-likelihood-drop", page)

    def test_signals_steer_beta_the_nll_weight_and_the_rate_and_a_restarted_server_loses_nothing(self):
        server = Server()
        self.addCleanup(server.close)
        steer = lambda name, value: server.post(  # noqa: E731
            "/runs/trl-steer/signals", {"kind": "set_hparam", "name": name, "value": value, "reason": "test"}
        )
        callback = RedlineCallback(server.url, "trl-steer")
        t = trainer(self.out, 40, 1e-3, [callback, At({
            4: lambda: (steer("beta", 0.3), steer("nll_alpha", 0.5), steer("lr_scale", 0.5)),
            12: server.kill,
            20: server.restart,
        })])
        t.train()
        self.assertEqual(server.get("/runs/trl-steer")["status"], "completed")
        self.assertEqual((t.beta, t.loss_types, t.loss_weights), (0.3, ["sigmoid", "sft"], [1.0, 0.5]))
        signals = {s["name"]: s for s in server.get("/runs/trl-steer/signals?pending=false")["signals"]}
        for name, before, after in (
            ("beta", 0.1, 0.3), ("nll_alpha", 0.0, 0.5), ("lr_scale", 1.0, 0.5), ("learning_rate", 1e-3, 5e-4)
        ):
            applied = signals[name if name != "learning_rate" else "lr_scale"]["applied_step"]
            self.assertGreater(applied, 4)
            expected = [(s, before if s < applied else after) for s in range(1, 41)]
            self.assertEqual(server.series("trl-steer", name), expected, name)
        # Once each, none lost: the steps logged while the server was down came later.
        self.assertEqual([s for s, _ in server.series("trl-steer", "loss")], list(range(1, 41)))

    def test_the_mixins_metric_names_are_in_redlines_catalogue(self):
        listing = json.loads(subprocess.run([str(BIN), "metrics", "--json"], check=True, capture_output=True).stdout)
        known = {m["name"] for m in listing["metrics"]}

        def outside(names):
            return sorted(n for n in names if n not in known and n.removeprefix(listing["eval_prefix"]) not in known)

        torch.manual_seed(0)
        ids = torch.randint(0, 32, (4, 6))
        mask = torch.tensor([[0, 0, 1, 1, 1, 0]] * 4)
        step = overoptimisation_metrics(torch.randn(4, 6, 8), torch.nn.Linear(8, 32), ids, mask, torch.randn(2))
        model = AutoModelForCausalLM.from_pretrained(FIXTURE)
        tok = AutoTokenizer.from_pretrained(FIXTURE)
        generated = generation_metrics(model, tok, [tok("1+1=")["input_ids"]], ["2"], 4, 10, seed=1)
        self.assertEqual(outside([*step, *generated, "beta", "nll_alpha", "lr_scale"]), [])
        self.assertIn("eval/score", generated)
        self.assertEqual(outside(["topk_entropy/chosn"]), ["topk_entropy/chosn"], "the check can fail")

    def test_a_misspelt_callback_option_fails_at_once(self):
        with self.assertRaisesRegex(TypeError, "rule"):
            RedlineCallback("http://127.0.0.1:1", "x", rule=["presets"])

    def test_trainer_log_keys_become_redline_metric_names(self):
        self.assertEqual(metric_name("eval_rewards/margins"), "eval/rewards/margins")
        self.assertEqual(metric_name("train_runtime"), "train_runtime")
        self.assertEqual(metric_name("weird key!"), "weird_key_")


if __name__ == "__main__":
    unittest.main()
