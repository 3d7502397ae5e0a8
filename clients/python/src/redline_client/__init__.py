"""Stream a training run to a Redline server and take its signals (stop, checkpoint, set a
hyperparameter). Standard library only; `redline_client.hf` (a transformers `TrainerCallback`)
and `redline_client.trl` (the over-optimisation metrics for TRL's DPO trainer) import their
frameworks when imported themselves.

    run = redline_client.Run("http://127.0.0.1:8080", "dpo-7", rules=["presets"])
    run.log(step, {"loss": 0.69, "rewards/margins": 0.1})
    for signal in run.pending_signals(): ...; run.ack(signal, step)
    run.finish("completed")
"""

from .run import Delivery, RefusedError, Run, Signal

__all__ = ["Delivery", "RefusedError", "Run", "Signal"]
__version__ = "0.1.0"
