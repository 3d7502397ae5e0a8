"""What `RedlineDPOTrainer`'s metrics cost a TRL step: TRL's own `DPOTrainer` and the Redline one
take turns training the same model on the same batches, and the step times are compared. Run by
`redline bench trl-metrics` (from the repository root) with a Python that has torch, transformers
and TRL; prints one JSON line of results.

The model is the peers' "small" fixture shape (Llama, width 384, 6 layers, 6 heads, 2 KV heads;
random weights, seed 0) with the tiny fixture's tokenizer and preference pairs.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import load_dataset  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

import redline_client.trl as rtrl  # noqa: E402

TINY = ROOT / "trainer" / "tests" / "fixtures" / "tiny-llama"


def small_fixture(folder: Path) -> Path:
    tok = AutoTokenizer.from_pretrained(TINY)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    shutil.copy(TINY / "train.jsonl", folder / "train.jsonl")
    return folder


class StepClock(TrainerCallback):
    def __init__(self):
        self.seconds, self.t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self.t)


def train(model_dir: Path, redline: bool, steps: int, out: str) -> list[float]:
    base = rtrl.RedlineDPOTrainer if redline else DPOTrainer

    class InOrder(base):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    load = lambda: LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    cfg = DPOConfig(
        output_dir=out, per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-4,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        seed=0, max_length=64, bf16=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    clock = StepClock()
    t = InOrder(
        model=load(), ref_model=load(), args=cfg, processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=load_dataset("json", data_files=str(model_dir / "train.jsonl"))["train"], callbacks=[clock],
    )
    t.train()
    return clock.seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30, help="timed steps per training")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--runs", type=int, default=3, help="trainings per side, taken in turns")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    # The metrics' own time, measured inside the step.
    spent = []
    inner = rtrl.overoptimisation_metrics

    def timed(*args, **kw):
        t = time.perf_counter()
        out = inner(*args, **kw)
        spent.append(time.perf_counter() - t)
        return out

    rtrl.overoptimisation_metrics = timed
    with tempfile.TemporaryDirectory() as tmp:
        model = small_fixture(Path(tmp) / "small")
        plain, redline = [], []
        for run in range(a.runs):
            for side in ((False, True) if run % 2 == 0 else (True, False)):
                seconds = train(model, side, a.warmup + a.steps, str(Path(tmp) / "out"))[a.warmup :]
                (redline if side else plain).extend(seconds)
    metric_seconds = statistics.median(spent)
    print(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "threads": torch.get_num_threads(), "steps_per_side": len(plain),
        "trl_step_median_s": statistics.median(plain), "redline_step_median_s": statistics.median(redline),
        "step_ratio": statistics.median(redline) / statistics.median(plain),
        "metrics_median_s": metric_seconds,
        "metrics_share_of_trl_step": metric_seconds / statistics.median(plain),
    }))


if __name__ == "__main__":
    main()
