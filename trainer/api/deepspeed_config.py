"""The DeepSpeed config for a PEFTJob: pure and torch-free, so the operator can render it into the ConfigMap.

The trainer builds its engine from the same function, so what the ConfigMap shows is what runs.
"""

from __future__ import annotations

import copy
from typing import Any

from .spec import PEFTJobSpec


def precision(spec: PEFTJobSpec) -> str:
    """The mixed precision that runs: `auto` is bf16 on GPU workers and fp32 on CPU ones."""
    if spec.training.precision != "auto":
        return spec.training.precision
    return "bf16" if spec.workers.gpus_per_worker > 0 else "fp32"


def deepspeed_config(spec: PEFTJobSpec) -> dict[str, Any]:
    """ZeRO stage, offload, precision and AdamW from the spec, with the raw `deepspeed.config` merged last."""
    training, ds = spec.training, spec.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds.nvme_path)
    if ds.offload_param != "none":
        zero["offload_param"] = _offload(ds.offload_param, ds.nvme_path)
    chosen = precision(spec)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "gradient_clipping": training.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": training.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": training.weight_decay,
                # torch's AdamW needs no compiled DeepSpeed op, so CPU ranks and any GPU image run it.
                "torch_adam": True,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": chosen == "bf16"},
        "fp16": {"enabled": chosen == "fp16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return merge(config, ds.config)


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": device == "cpu"}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`, recursively for nested sections."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
