"""The transformers side of `redline bench generate`: greedy `generate` (KV cache on) over the same
prompt token ids Redline generates from, with SmolLM2's GGUF file loaded by transformers itself
(dequantised to f32). Loads once, warms up with one untimed generation, prints a JSON line
{"ready": ...}, then answers every line read on stdin with one timed generation:
{"seconds": ..., "completions": [[ids...], ...]} (each completion cut after its first EOS, as Redline
returns them). Runs with the peers venv plus `pip install gguf`:

  .peers-venv/bin/python scripts/hf_generate.py MODEL.gguf PROMPTS.json --max-new-tokens 32 --threads 2

PROMPTS.json: {"prompts": [[ids...], ...], "eos": id}.
"""
import argparse, json, os, sys, time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.load(open(args.prompts))
    prompts, eos = spec["prompts"], spec["eos"]
    folder, name = os.path.dirname(args.model), os.path.basename(args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    # Left padding, as a batch of prompts of different lengths is generated with transformers.
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def generate():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        completions = []
        for row in out[:, width:].tolist():
            completions.append(row[: row.index(eos) + 1] if eos in row else row)
        return completions

    generate()
    print(json.dumps({
        "ready": True,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "attention": model.config._attn_implementation,
    }), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        completions = generate()
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "completions": completions}), flush=True)


if __name__ == "__main__":
    main()
