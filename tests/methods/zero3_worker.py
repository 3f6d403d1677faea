"""LoRA, Prompt Tuning, P-Tuning and Prefix-Tuning on a tiny GPT-2, plain or as a ZeRO-3 rank under `zero.Init`.

The ZeRO-3 test launches this script once on 2 CPU ranks (torchrun, gloo) for all four methods, because each
launch costs tens of seconds, and calls `run` in-process for the plain reference. Under `zero.Init` LoRA's
merge must gather and re-partition the frozen weights, the vocabulary init must gather the partitioned
embedding matrix, the prompt wrapper and the prefix pre-hook must run inside DeepSpeed's gather hooks, and
every export must gather the (then partitioned) trainable parameters. Dropout is off in the saved model and
every rank sees the same batch, so the averaged ZeRO-3 gradient equals the single-process one. Each run saves
what it produced (exports, counts, losses, LoRA's logits before and after merging) for the test to compare.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repo root, after the stdlib (no `operator` shadowing)

from peftjob_trainer.api.spec import MethodSpec  # noqa: E402
from peftjob_trainer.methods import build_method, parameter_counts  # noqa: E402
from peftjob_trainer.methods.lora import Lora  # noqa: E402
from peftjob_trainer.methods.zero import is_partitioned, is_writer  # noqa: E402

from tests.methods.tiny_models import tiny_batch  # noqa: E402

LR = 1e-2
STEPS = 2
METHODS = {
    "lora": {"lora": {"r": 4, "alpha": 8, "targetModules": ["c_attn", "mlp.c_proj"]}},
    "promptTuning": {"promptTuning": {"numVirtualTokens": 4, "init": "vocab"}},
    "pTuning": {"pTuning": {"numVirtualTokens": 4, "encoder": "lstm", "encoderHiddenSize": 16}},
    "prefixTuning": {"prefixTuning": {"numVirtualTokens": 4, "projectionHiddenSize": 16}},
}
"""Output folder name -> method spec."""
LORA_LOGITS = "lora_logits.pt"


def deepspeed_config(batch: int) -> dict[str, Any]:
    """ZeRO-3 with the same AdamW the plain run uses (torch's, no clipping), one micro-batch per step."""
    return {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
    }


def train(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], config: dict[str, Any], zero3: bool
) -> tuple[list[float], Callable[..., Any]]:
    """STEPS AdamW steps (DeepSpeed's engine under ZeRO-3); returns the losses and the forward to use after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if zero3:
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
        step, backward, forward = engine.step, engine.backward, engine
    else:
        optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
        step, backward, forward = (lambda: (optimizer.step(), optimizer.zero_grad())), torch.Tensor.backward, model
    losses = []
    for _ in range(STEPS):
        loss = forward(**batch).loss
        backward(loss)
        step()
        losses.append(loss.item())
    return losses, forward


def run(model_dir: Path, out: Path, zero3: bool) -> None:
    """For each method: load, attach (seed 0), train, save; then merge LoRA and record its logits."""
    import transformers

    batch = tiny_batch("gpt2", "causal-lm")
    config = deepspeed_config(batch["input_ids"].shape[0])
    if zero3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="gloo")
        keep_alive = HfDeepSpeedConfig(config)  # makes from_pretrained build under zero.Init  # noqa: F841
    record, lora_logits = {}, {}
    for name, spec in METHODS.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        partitioned = all(is_partitioned(p) for p in model.parameters())
        method = build_method(MethodSpec.model_validate(spec), "causal-lm")
        torch.manual_seed(0)
        model = method.attach(model)
        counts = parameter_counts(model)
        losses, forward = train(model, batch, config, zero3)
        method.save(model, out / name)
        if isinstance(method, Lora):
            with torch.no_grad():
                lora_logits["unmerged"] = forward(**batch).logits
                method.merge(model)
                lora_logits["merged"] = forward(**batch).logits
        record[name] = {"counts": counts, "losses": losses, "partitioned": partitioned}
    if is_writer():
        torch.save(lora_logits, out / LORA_LOGITS)
        (out / "result.json").write_text(json.dumps(record))


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run(Path(sys.argv[1]), Path(sys.argv[2]), zero3=True)
