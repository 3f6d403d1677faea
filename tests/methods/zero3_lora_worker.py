"""One LoRA run on a tiny GPT-2, either plain (one process) or as a ZeRO-3 rank under `deepspeed.zero.Init`.

The ZeRO-3 test launches this script on 2 CPU ranks (torchrun, gloo) and calls `run` in-process for the
plain reference; both write what they produced (export, counts, logits) so the test can compare them.
Dropout is off in the saved model and every rank sees the same batch, so the averaged ZeRO-3 gradient
equals the single-process one.
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

LR = 1e-2
STEPS = 2
LORA = {"lora": {"r": 4, "alpha": 8, "targetModules": ["c_attn", "mlp.c_proj"]}}


def deepspeed_config(batch: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
    }


def run(model_dir: Path, out: Path, zero3: bool) -> None:
    """Load, attach LoRA, take STEPS AdamW steps, save, then record logits unmerged and merged."""
    import transformers

    batch = tiny_batch("gpt2", "causal-lm")
    config = deepspeed_config(batch["input_ids"].shape[0])
    if zero3:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="gloo")
        keep_alive = HfDeepSpeedConfig(config)  # makes from_pretrained build under zero.Init  # noqa: F841
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    partitioned = all(is_partitioned(p) for p in model.parameters())
    method = build_method(MethodSpec.model_validate(LORA), "causal-lm")
    torch.manual_seed(0)
    model = method.attach(model)
    counts = parameter_counts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if zero3:
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
    method.save(model, out / "adapter")
    with torch.no_grad():
        unmerged = forward(**batch).logits
        method.merge(model)
        merged = forward(**batch).logits
    if is_writer():
        torch.save({"unmerged": unmerged, "merged": merged}, out / "logits.pt")
        record = {"counts": counts, "losses": losses, "partitioned": partitioned}
        (out / "result.json").write_text(json.dumps(record))


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run(Path(sys.argv[1]), Path(sys.argv[2]), zero3=True)
