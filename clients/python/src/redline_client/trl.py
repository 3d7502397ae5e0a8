"""The over-optimisation metrics on TRL's DPO trainer, every step, computed as Redline's own
trainer computes them (REFERENCE.md, "Per-step metrics"):

- `logps_mean/chosen`, `logps_mean/rejected`: the batch mean of each completion's per-token
  average log-probability;
- `topk_entropy/*`, `topk_mass/*`, `top1_prob/*` (k = 10, bits): at each completion position, the
  k largest next-token probabilities, their sum, the entropy of their renormalisation and the
  largest alone, averaged over the side's completion tokens;
- `kl/chosen`: Σ (log π − log π_ref) over the chosen tokens, per token (an estimate: the tokens
  are not sampled from the policy);
- `beta`, `nll_alpha`: the settings the step trained with, which the regulator steers;
- at each evaluation, on the policy's own samples for the first `redline_gen_prompts` held-out
  prompts (temperature 0.5, top-p 0.75, as arXiv 2410.11677 samples): `topk_entropy/generated`,
  `topk_mass/generated`, `top1_prob/generated` over the generated positions, `eval/generated_tokens`
  and, when the eval rows carry an `answer`, `eval/score` (exact match of the last number).

TRL 1.x scores tokens with a fused LM head that never builds the logits, so the metrics project
the policy's last hidden states (taken by a forward hook, detached) through its LM head again, for
completion positions only and without a gradient. In training they are kept per optimizer step
(`RedlineCallback` sends them under that step, never averaged over a logging window); in
evaluation they join TRL's own eval metrics (`eval/logps_mean/chosen`, ...).

    from redline_client.hf import RedlineCallback
    from redline_client.trl import RedlineDPOTrainer
    trainer = RedlineDPOTrainer(model=..., args=DPOConfig(..., logging_steps=1), ...,
                                callbacks=[RedlineCallback("http://127.0.0.1:8080", "dpo-7")])
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from trl import DPOTrainer

#: k of the top-k metrics (arXiv 2410.11677 §4.1).
TOP_K = 10
#: Completion positions projected through the LM head at once (bounds the extra memory to
#: ROWS × vocabulary floats).
ROWS = 1024
SIDES = ("chosen", "rejected")


@torch.no_grad()
def overoptimisation_metrics(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_chosen_sum: torch.Tensor | None = None,
    top_k: int = TOP_K,
) -> dict[str, float]:
    """The metrics of one DPO batch laid out as TRL lays it out: rows `[chosen..., rejected...]`,
    `hidden (2B, T, H)` the policy's last hidden states, `completion_mask (2B, T)` 1 on completion
    tokens. `ref_chosen_sum (B,)`: the reference's summed log-probs of the chosen completions."""
    mask = completion_mask[:, 1:].bool()
    labels = input_ids[:, 1:][mask]
    rows = hidden[:, :-1][mask]
    seq = mask.nonzero()[:, 0]
    n = rows.shape[0]
    token_logp = torch.empty(n, dtype=torch.float32, device=rows.device)
    mass = torch.empty_like(token_logp)
    entropy = torch.empty_like(token_logp)
    top1 = torch.empty_like(token_logp)
    for start in range(0, n, ROWS):
        end = min(start + ROWS, n)
        logits = lm_head(rows[start:end])
        token_logp[start:end] = torch.log_softmax(logits.float(), dim=-1).gather(1, labels[start:end, None]).squeeze(1)
        mass[start:end], entropy[start:end], top1[start:end] = _topk(logits, top_k)
    pairs = input_ids.shape[0] // 2
    per_seq = torch.zeros(2 * pairs, dtype=torch.float32, device=rows.device).index_add_(0, seq, token_logp)
    lengths = mask.sum(1).clamp_min(1).float()
    out: dict[str, float] = {}
    for i, side in enumerate(SIDES):
        on_side = (seq >= i * pairs) & (seq < (i + 1) * pairs)
        count = on_side.sum().clamp_min(1)
        out[f"logps_mean/{side}"] = (per_seq / lengths)[i * pairs : (i + 1) * pairs].mean().item()
        out[f"topk_mass/{side}"] = (mass[on_side].sum() / count).item()
        out[f"topk_entropy/{side}"] = (entropy[on_side].sum() / count).item()
        out[f"top1_prob/{side}"] = (top1[on_side].sum() / count).item()
    if ref_chosen_sum is not None:
        chosen_tokens = mask[:pairs].sum().clamp_min(1).float()
        out["kl/chosen"] = ((per_seq[:pairs].sum() - ref_chosen_sum.float().sum()) / chosen_tokens).item()
    return out


def _topk(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of `logits (n, v)`: the top-k mass, the entropy (bits) of the renormalised top k
    and the top-1 probability."""
    top = torch.log_softmax(logits.float(), dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1).values.exp()
    mass = top.sum(-1)
    q = top / mass[:, None]
    # 0·log 0 = 0: the clamp keeps the log finite where a probability underflowed to zero.
    return mass, -(q * q.clamp_min(1e-30).log2()).sum(-1), top[:, 0]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(text: str) -> str:
    """The last number in `text` (" 146." gives "146"), else the trimmed text: how Redline's trainer
    scores a sample against its gold answer."""
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


@torch.no_grad()
def generation_metrics(model, tokenizer, prompts: list[list[int]], answers, max_new_tokens: int, top_k: int,
                       seed: int, temperature: float = 0.5, top_p: float = 0.75) -> dict[str, float]:
    """Samples one completion per prompt (left-padded, one batch) and measures the policy's
    next-token distributions at every generated position (before the sampling's temperature)."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # Sampling must not move the training's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=top_p,
            top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pad, output_logits=True,
            return_dict_in_generate=True,
        )
    generated = out.sequences[:, width:]
    eos = tokenizer.eos_token_id
    # A row is live at a position up to and including its first EOS.
    ended = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    live = []
    for t in range(generated.shape[1]):
        live.append(~ended)
        if eos is not None:
            ended = ended | (generated[:, t] == eos)
    live = torch.stack(live, 1)
    logits = torch.stack(out.logits, 1)[live]
    mass, entropy, top1 = _topk(logits, top_k)
    result = {
        "topk_mass/generated": mass.mean().item(),
        "topk_entropy/generated": entropy.mean().item(),
        "top1_prob/generated": top1.mean().item(),
        "eval/generated_tokens": live.sum(1).float().mean().item(),
    }
    if answers and all(a is not None for a in answers):
        texts = tokenizer.batch_decode([row[row_live] for row, row_live in zip(generated, live)],
                                       skip_special_tokens=True)
        result["eval/score"] = sum(final_answer(t) == final_answer(str(a)) for t, a in zip(texts, answers)) / len(texts)
    return result


def nll_alpha(trainer) -> float:
    """The weight of the NLL (RPO) term the trainer uses now: the `sft` entry of TRL 1.x's
    `loss_type`/`loss_weights`, or `rpo_alpha` in older TRL."""
    types = getattr(trainer, "loss_types", None)
    if types is not None:
        return float(trainer.loss_weights[types.index("sft")]) if "sft" in types else 0.0
    return float(getattr(trainer.args, "rpo_alpha", None) or 0.0)


def set_nll_alpha(trainer, value: float) -> None:
    """Sets the NLL (RPO) weight from the next step, in whichever form the installed TRL uses."""
    types = getattr(trainer, "loss_types", None)
    if types is not None:
        if "sft" in types:
            trainer.loss_weights[types.index("sft")] = value
        elif value != 0:
            # New lists: `loss_weights` may be the user's own list from DPOConfig.
            trainer.loss_types = [*types, "sft"]
            trainer.loss_weights = [*trainer.loss_weights, value]
        return
    if not hasattr(trainer.args, "rpo_alpha"):
        raise ValueError("this TRL has neither loss_type 'sft' nor rpo_alpha: no NLL term to weight")
    trainer.args.rpo_alpha = value


class _Hooks:
    """Forward hooks that keep, for one `compute_loss`, the policy's last hidden states and the
    reference's per-token log-probs (both detached)."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module | None):
        self.hidden = None
        self.ref_logps = None

        def keep_hidden(_module, _args, output):
            self.hidden = output.last_hidden_state.detach()

        def keep_ref(_module, _args, output):
            log_probs = getattr(output, "log_probs", None)
            if log_probs is not None:
                self.ref_logps = log_probs.detach()

        self.handles = [policy.base_model.register_forward_hook(keep_hidden)]
        if reference is not None:
            self.handles.append(reference.register_forward_hook(keep_ref))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class RedlineMetricsMixin:
    """Adds the metrics above to a TRL DPO-style trainer (put it before the trainer class)."""

    redline_top_k = TOP_K
    #: Held-out prompts sampled at each evaluation (0: none), and their new-token limit.
    redline_gen_prompts = 16
    redline_gen_max_tokens = 32

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        data = self.eval_dataset if eval_dataset is None else eval_dataset
        if self.redline_gen_prompts and hasattr(data, "column_names") and "prompt_ids" in data.column_names:
            rows = data.select(range(min(self.redline_gen_prompts, len(data))))
            model = self.accelerator.unwrap_model(self.model)
            training = model.training
            model.eval()
            try:
                self._redline_eval_metrics = generation_metrics(
                    model, self.processing_class, rows["prompt_ids"],
                    rows["answer"] if "answer" in rows.column_names else None,
                    self.redline_gen_max_tokens, self.redline_top_k, self.args.seed + self.state.global_step,
                )
            finally:
                model.train(training)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def redline_take_eval_metrics(self) -> dict[str, float]:
        """The last evaluation's metrics on the policy's own samples; cleared."""
        taken, self._redline_eval_metrics = getattr(self, "_redline_eval_metrics", {}), {}
        return taken

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = self.accelerator.unwrap_model(model)
        if hasattr(policy, "get_base_model"):  # PEFT
            policy = policy.get_base_model()
        with _Hooks(policy, getattr(self, "ref_model", None)) as hooks:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if hooks.hidden is None:
            return result
        pairs = inputs["input_ids"].shape[0] // 2
        ref_sum = None
        if "ref_chosen_logps" in inputs:
            ref_sum = inputs["ref_chosen_logps"]
        elif hooks.ref_logps is not None:
            ref_sum = (hooks.ref_logps * inputs["completion_mask"][:, 1:])[:pairs].sum(1)
        metrics = overoptimisation_metrics(
            hooks.hidden,
            policy.get_output_embeddings(),
            inputs["input_ids"],
            inputs["completion_mask"],
            ref_sum,
            self.redline_top_k,
        )
        mode = "train" if self.model.training else "eval"
        for name, value in metrics.items():
            # TRL's own log (and W&B, TensorBoard) show them too, averaged over its window.
            self._metrics[mode][name].append(value)
            if mode == "train":
                self._redline_step_metrics[name].append(value)
        return result

    @property
    def _redline_step_metrics(self) -> defaultdict:
        if not hasattr(self, "_redline_accumulated"):
            self._redline_accumulated = defaultdict(list)
        return self._redline_accumulated

    def redline_take_step_metrics(self) -> dict[str, float]:
        """This optimizer step's metrics (the mean over its micro-batches) and the settings it
        trained with; cleared for the next step."""
        taken = {k: math.fsum(v) / len(v) for k, v in self._redline_step_metrics.items() if v}
        self._redline_step_metrics.clear()
        if taken:
            taken["beta"] = float(self.beta)
            taken["nll_alpha"] = nll_alpha(self)
        return taken


class RedlineDPOTrainer(RedlineMetricsMixin, DPOTrainer):
    """TRL's `DPOTrainer` with Redline's over-optimisation metrics; a `RedlineCallback` among
    its callbacks gets the trainer itself, so it can steer β and the NLL weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for cb in self.callback_handler.callbacks:
            if getattr(cb, "redline_wants_trainer", False) and getattr(cb, "trainer", None) is None:
                cb.trainer = self
