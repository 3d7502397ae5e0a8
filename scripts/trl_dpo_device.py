"""Runs ../shared/peers/trl_dpo.py on a device (a GPU), with bf16 autocast or in float32.

The peer script pins TRL to the CPU (use_cpu=True, bf16=False); `redline bench train --model M --device cuda`
measures TRL beside Redline on the same GPU, batch, length and precision, so this changes those two settings
and nothing else:

  python scripts/trl_dpo_device.py PEERS_DIR [--device cuda] [--dtype bf16|f32] MODEL_DIR OUT.jsonl [trl_dpo.py's flags]

--dtype bf16 is TRL's mixed precision (f32 weights and optimizer, bf16 autocast), the counterpart of Redline's
`--dtype bf16`.
"""
import argparse, importlib.util, sys

def main():
    p = argparse.ArgumentParser()
    p.add_argument("peers")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    a, rest = p.parse_known_args()
    spec = importlib.util.spec_from_file_location("trl_dpo", f"{a.peers}/trl_dpo.py")
    trl_dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trl_dpo)
    on_cpu = a.device == "cpu"
    if not on_cpu:
        import torch
        if not torch.cuda.is_available():
            sys.exit(f"trl_dpo_device: torch sees no GPU for --device {a.device}")
        if ":" in a.device:
            torch.cuda.set_device(int(a.device.split(":")[1]))
    config = trl_dpo.DPOConfig

    def on_device(*args, **kwargs):
        kwargs.update(use_cpu=on_cpu, bf16=a.dtype == "bf16")
        return config(*args, **kwargs)

    trl_dpo.DPOConfig = on_device
    sys.argv = ["trl_dpo.py", *rest]
    trl_dpo.main()

if __name__ == "__main__":
    main()
