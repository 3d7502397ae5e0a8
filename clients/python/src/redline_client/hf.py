"""`RedlineCallback`: a transformers `TrainerCallback` (TRL's trainers included) that streams every
log to Redline under `state.global_step` and applies Redline's signals at step boundaries.

    trainer = DPOTrainer(..., args=DPOConfig(..., logging_steps=1))
    trainer.add_callback(RedlineCallback("http://127.0.0.1:8080", "dpo-7", trainer=trainer))

Signals, each acknowledged with the step at which it applied (or refused, with why):
- `stop`: saves a checkpoint now and ends training after this step. The checkpoint the rule asked
  to keep (the newest `checkpoint-N` at or before its `keep_step`) becomes
  `state.best_model_checkpoint`, which `load_best_model_at_end` loads, and is written with the
  signal to `OUTPUT_DIR/redline-stop.json`.
- `checkpoint`: saves one now.
- `set_hparam beta`: the trainer's β; `nll_alpha`: the NLL (RPO) weight, as the installed TRL
  spells it (`loss_type` "sft" with its `loss_weights` entry, or `rpo_alpha`); `lr_scale`: the
  learning-rate schedule's base rates, scaled from the original ones. β and the NLL weight need
  the trainer (`trainer=`, or `RedlineDPOTrainer`, which hands itself over).

Only the main process reports and takes signals (a multi-process run is not steered on its other
ranks).
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import re
from pathlib import Path

from transformers import TrainerCallback

from .run import Run, Signal
from .spool import replace_file

log = logging.getLogger("redline_client")

_INVALID = re.compile(r"[^A-Za-z0-9_./-]")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
#: What the server refuses as a hyperparameter anyway (core/src/hparams.rs): checked here too, for
#: an older server.
_LIMIT = 1000.0


def metric_name(key: str) -> str | None:
    """A Trainer log key as a Redline metric: `eval_rewards/margins` → `eval/rewards/margins`
    (Redline's presets read `eval/` series), other keys as they are, characters the API does not
    take replaced by `_`."""
    if key.startswith("eval_"):
        key = "eval/" + key[len("eval_") :]
    key = _INVALID.sub("_", key).lstrip("_./-")[:128]
    return key or None


class RedlineCallback(TrainerCallback):
    redline_wants_trainer = True

    def __init__(self, server: str | None, run_id: str, *, trainer=None, **run_options):
        """`run_options`: the keyword arguments of `redline_client.Run` (name, project, tags,
        config, rules, token, spool_dir, finish_grace); the spool goes to `OUTPUT_DIR/redline`
        unless `spool_dir` says otherwise, and `config` is added to the Trainer's arguments."""
        # Checked now, not when training starts: a misspelt option fails at once.
        inspect.signature(Run).bind(server, run_id, **run_options)
        self.server, self.run_id = server, run_id
        self.user_config = run_options.pop("config", None)
        self.options = run_options
        self.trainer = trainer
        self.run: Run | None = None
        self.stop_signal: Signal | None = None
        self._base_lrs = None
        self._lr_scale = 1.0
        # The step being gathered: Redline's rules read a step once, when it first arrives, so
        # a step's training metrics, its logs and its evaluation travel as one record.
        self._step: int | None = None
        self._metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ run lifetime

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero or self.run is not None:
            return
        config = {"trainer": type(self.trainer).__name__ if self.trainer else None, "args": args.to_dict()}
        if self.user_config:
            config.update(self.user_config)
        options = {"spool_dir": Path(args.output_dir) / "redline", **self.options}
        self.run = Run(self.server, self.run_id, config=config, **options)
        # A process that dies in training leaves a run that says why it stopped reporting.
        atexit.register(self._exit)

    def on_train_end(self, args, state, control, **kw):
        if self.run is None:
            return
        self._flush()
        if self.stop_signal is not None:
            s = self.stop_signal
            self.run.finish("stopped", f"stop signal {s.id}: {s.reason}")
        else:
            self.run.finish("completed")
        self.run = None

    def _exit(self):
        if self.run is not None and not self.run.finished:
            self._flush()
            self.run.finish("failed", "the process exited before training ended")

    def _add(self, step: int, metrics: dict[str, float], *, averaged: bool = False) -> None:
        """Gathers `metrics` into `step`'s record. `averaged`: the Trainer's logs, which average
        over the logging window; where the step's own measurement of a metric is already in (the
        mixin's, at `on_step_end`), it is kept."""
        if step != self._step:
            self._flush()
            self._step = step
        if averaged:
            metrics = {k: v for k, v in metrics.items() if k not in self._metrics}
        self._metrics.update(metrics)

    def _flush(self) -> None:
        if self._step is not None and self._metrics:
            self.run.log(self._step, self._metrics)
        self._step, self._metrics = None, {}

    # ------------------------------------------------------------------ steps

    def on_log(self, args, state, control, logs=None, **kw):
        if self.run is None or not logs:
            return
        metrics = {}
        for key, value in logs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = metric_name(key)
            if name:
                metrics[name] = float(value)
        self._add(state.global_step, metrics, averaged=True)

    def on_step_begin(self, args, state, control, **kw):
        # Everything of the previous step (its logs, its evaluation, its checkpoint) is in.
        if self.run is not None:
            self._flush()

    def on_step_end(self, args, state, control, **kw):
        if self.run is None:
            return
        take = getattr(self.trainer, "redline_take_step_metrics", None)
        step_metrics = take() if take else {}
        # The settings this step trained with (the mixin adds beta and nll_alpha).
        step_metrics["lr_scale"] = self._lr_scale
        self._add(state.global_step, step_metrics)
        for signal in self.run.pending_signals():
            self._apply(signal, args, state, control, kw.get("lr_scheduler"))

    def on_evaluate(self, args, state, control, **kw):
        if self.run is None:
            return
        take = getattr(self.trainer, "redline_take_eval_metrics", None)
        if take:
            self._add(state.global_step, take())

    def on_save(self, args, state, control, **kw):
        if self.run is None or self.stop_signal is None:
            return
        self._mark_kept(args, state)

    # ------------------------------------------------------------------ signals

    def _apply(self, s: Signal, args, state, control, scheduler) -> None:
        done = state.global_step
        if s.kind == "stop":
            control.should_save = True
            control.should_training_stop = True
            self.stop_signal = s
            log.warning("redline: step %d: stop (%s)", done, s.reason)
            self.run.ack(s, done)
        elif s.kind == "checkpoint":
            control.should_save = True
            log.warning("redline: step %d: checkpoint (%s)", done, s.reason)
            self.run.ack(s, done)
        elif s.kind == "set_hparam":
            try:
                self._steer(s, scheduler)
            except ValueError as e:
                log.warning("redline: step %d: refused signal %d to set %s: %s", done + 1, s.id, s.name, e)
                self.run.ack(s, done + 1, refused=str(e))
                return
            log.warning("redline: step %d: %s = %s (%s)", done + 1, s.name, s.value, s.reason)
            # It takes effect from the next step: that is the step it applied at.
            self.run.ack(s, done + 1)
        else:
            self.run.ack(s, done, refused=f"unknown signal kind {s.kind!r}")

    def _steer(self, s: Signal, scheduler) -> None:
        if s.value is None or not (0 <= s.value <= _LIMIT):
            raise ValueError(f"{s.name} = {s.value} is outside 0 to {_LIMIT:g}")
        if s.name == "beta":
            if s.value <= 0:
                raise ValueError("beta must be above 0")
            if self.trainer is None or not hasattr(self.trainer, "beta"):
                raise ValueError("the callback has no DPO-style trainer to set beta on (pass trainer=)")
            self.trainer.beta = s.value
            if hasattr(self.trainer.args, "beta"):
                self.trainer.args.beta = s.value
        elif s.name == "nll_alpha":
            if self.trainer is None:
                raise ValueError("the callback has no trainer to set the NLL weight on (pass trainer=)")
            from .trl import set_nll_alpha

            set_nll_alpha(self.trainer, s.value)
        elif s.name == "lr_scale":
            # The schedule sets the rate at every step from its base rates, so scaling the current
            # rate would be undone at the next one: scale the base rates, from the original ones.
            if scheduler is None or not hasattr(scheduler, "base_lrs"):
                raise ValueError("the learning-rate scheduler has no base rates to scale")
            if self._base_lrs is None:
                self._base_lrs = list(scheduler.base_lrs)
            before = list(scheduler.base_lrs)
            scheduler.base_lrs = [b * s.value for b in self._base_lrs]
            self._lr_scale = s.value
            for group, old, new in zip(scheduler.optimizer.param_groups, before, scheduler.base_lrs):
                group["lr"] = group["lr"] * (new / old) if old else new
            # What `get_last_lr` answers, and so what the Trainer logs as the next step's rate.
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        else:
            raise ValueError(f"{s.name!r} is not a hyperparameter this callback steers (beta, nll_alpha, lr_scale)")

    def _mark_kept(self, args, state) -> None:
        """Records the checkpoint the stop asked to keep, where HF code looks for the best one."""
        s = self.stop_signal
        out = Path(args.output_dir)
        keep = s.keep_step if s.keep_step is not None else state.global_step
        steps = ((_CHECKPOINT.fullmatch(p.name), p) for p in out.glob("checkpoint-*"))
        kept = max(((int(m[1]), p) for m, p in steps if m and int(m[1]) <= keep), default=None)
        if kept is None:
            log.warning(
                "redline: no checkpoint at or before step %d is on disk (save more often: save_steps); keeping none",
                keep,
            )
        else:
            state.best_model_checkpoint = str(kept[1])
            if hasattr(state, "best_global_step"):
                state.best_global_step = kept[0]
        record = {
            "signal": s.id,
            "reason": s.reason,
            "rule": s.source_rule,
            "stopped_at_step": state.global_step,
            "keep_step": s.keep_step,
            "kept_step": kept[0] if kept else None,
            "kept_checkpoint": str(kept[1]) if kept else None,
        }
        replace_file(out / "redline-stop.json", json.dumps(record, indent=2))
