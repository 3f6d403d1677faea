"""Prompt Tuning (vocabulary init), P-Tuning and Prefix-Tuning on a tiny GPT-2, plain or as a ZeRO-3 rank.

The ZeRO-3 test launches this script on 2 CPU ranks (torchrun, gloo) and calls `run` in-process for the
plain reference. Under `zero.Init` the vocabulary init must gather the partitioned embedding matrix, the
prompt wrapper and the prefix pre-hook must run inside DeepSpeed's gather hooks, and the export must gather
the (then partitioned) trainable parameters; each run saves what it produced so the test can compare.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repo root, after the stdlib (no `operator` shadowing)

from peftjob_trainer.api.spec import MethodSpec  # noqa: E402
from peftjob_trainer.methods import build_method, parameter_counts  # noqa: E402
from peftjob_trainer.methods.zero import is_partitioned, is_writer  # noqa: E402
from tests.methods.tiny_models import tiny_batch  # noqa: E402
from tests.methods.zero3_lora_worker import LR, STEPS, deepspeed_config  # noqa: E402

METHODS = {
    "promptTuning": {"promptTuning": {"numVirtualTokens": 4, "init": "vocab"}},
    "pTuning": {"pTuning": {"numVirtualTokens": 4, "encoder": "lstm", "encoderHiddenSize": 16}},
    "prefixTuning": {"prefixTuning": {"numVirtualTokens": 4, "projectionHiddenSize": 16}},
}


def run(model_dir: Path, out: Path, zero3: bool) -> None:
    """For each method: load, attach (seed 0), take STEPS AdamW steps, save; record losses and counts."""
    import transformers

    batch = tiny_batch("gpt2", "causal-lm")
    config = deepspeed_config(batch["input_ids"].shape[0])
    if zero3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="gloo")
        keep_alive = HfDeepSpeedConfig(config)  # makes from_pretrained build under zero.Init  # noqa: F841
    record = {}
    for name, spec in METHODS.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        partitioned = all(is_partitioned(p) for p in model.parameters())
        method = build_method(MethodSpec.model_validate(spec), "causal-lm")
        torch.manual_seed(0)
        model = method.attach(model)
        counts = parameter_counts(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if zero3:
            engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
            step, backward, forward = engine.step, engine.backward, engine
        else:
            optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
            step, backward, forward = (lambda o=optimizer: (o.step(), o.zero_grad())), torch.Tensor.backward, model
        losses = []
        for _ in range(STEPS):
            loss = forward(**batch).loss
            backward(loss)
            step()
            losses.append(loss.item())
        method.save(model, out / name)
        record[name] = {"counts": counts, "losses": losses, "partitioned": partitioned}
    if is_writer():
        (out / "result.json").write_text(json.dumps(record))


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run(Path(sys.argv[1]), Path(sys.argv[2]), zero3=True)
