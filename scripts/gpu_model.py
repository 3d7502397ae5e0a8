"""Makes the model folder that scripts/gpu-check.sh trains: SmolLM2-135M's architecture and tokenizer (from
DESCRIPTION, the config and tokenizer files that `gpu-check.sh prepare` writes from the GGUF), weights drawn by
transformers' own initialisation (seed 0: the GGUF, 98 MB, cannot travel to the GPU machine, and throughput does
not depend on the weights' values), and a train.jsonl of long synthetic pairs, so that batches fill a GPU.

  python scripts/gpu_model.py DESCRIPTION OUT_DIR [--pairs 512] [--words 400] [--layers N --hidden H]

--layers/--hidden shrink the model for a CPU dry run of the check (the vocabulary stays SmolLM2's).
"""
import argparse, json, random

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

def main():
    p = argparse.ArgumentParser()
    p.add_argument("description"); p.add_argument("out")
    p.add_argument("--pairs", type=int, default=512); p.add_argument("--words", type=int, default=400)
    p.add_argument("--layers", type=int); p.add_argument("--hidden", type=int)
    a = p.parse_args()
    config = AutoConfig.from_pretrained(a.description)
    if a.layers:
        config.num_hidden_layers = a.layers
    if a.hidden:
        config.intermediate_size = config.intermediate_size * a.hidden // config.hidden_size
        config.head_dim = config.hidden_size // config.num_attention_heads
        config.hidden_size = a.hidden
        config.num_attention_heads = max(1, a.hidden // config.head_dim)
        config.num_key_value_heads = min(config.num_key_value_heads, config.num_attention_heads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(a.out)
    AutoTokenizer.from_pretrained(a.description).save_pretrained(a.out)
    rng = random.Random(0)
    vocab = ["the", "model", "answer", "river", "blue", "seven", "quietly", "under", "paper", "light", "is",
             "was", "and", "of", "stone", "garden", "number", "question", "because", "north", "small", "old"]
    words = lambda n: " ".join(rng.choice(vocab) for _ in range(n))  # noqa: E731
    with open(f"{a.out}/train.jsonl", "w") as f:
        for _ in range(a.pairs):
            prompt = f"<|im_start|>user\n{words(a.words // 2)}<|im_end|>\n<|im_start|>assistant\n"
            f.write(json.dumps({"prompt": prompt, "chosen": words(a.words // 2), "rejected": words(a.words // 2)}) + "\n")
    print(json.dumps({"out": a.out, "parameters": sum(p.numel() for p in model.parameters()),
                      "layers": config.num_hidden_layers, "hidden": config.hidden_size}))

if __name__ == "__main__":
    main()
