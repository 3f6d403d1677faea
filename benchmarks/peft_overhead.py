"""Training-step time and peak memory of peftjob's methods against `peft`'s, on the same model, batch and seed.

LoRA, Prompt Tuning, P-Tuning and Prefix-Tuning run on a GPT-2 config (hidden 256, 4 layers, random weights)
as ours and as `peft`'s; Adapter and VPT (which `peft` does not implement as such) run on a ViT config against
the frozen-backbone baseline (linear probe: only the classifier trains). Printed as ratios with trainable
parameter counts. Goal: ours/peft <= 1.0.

How it measures, so the numbers can be trusted on a shared CPU machine:
- time: every configuration is built once in this process, then all are stepped round-robin (interleaved,
  so load from other processes hits all alike); the median step time over the rounds is reported.
- memory: one more (warmed-up) step of each configuration under torch.profiler with profile_memory; the
  allocator's alloc/free events, replayed in order, give the peak of tensor bytes allocated during the step
  beyond what was live before it (activations, gradients, temporaries). Process RSS was tried first and is
  useless here: the allocator keeps the model-building peak, so training never raises ru_maxrss.
Usage: python benchmarks/peft_overhead.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # repo root after the stdlib (no `operator` shadowing)

BATCH, LENGTH, VOCAB = 8, 128, 1000
IMAGE, PATCH, LABELS = 64, 8, 10
GOAL = 1.0

OURS = {
    "lora": {"lora": {"r": 8, "alpha": 16, "targetModules": ["c_attn"]}},
    "promptTuning": {"promptTuning": {"numVirtualTokens": 20, "init": "random"}},
    "pTuning": {"pTuning": {"numVirtualTokens": 20, "encoder": "mlp", "encoderHiddenSize": 128}},
    "prefixTuning": {"prefixTuning": {"numVirtualTokens": 20, "projection": True, "projectionHiddenSize": 512}},
    "adapter": {"adapter": {"bottleneckSize": 64}},
    "vpt-shallow": {"vpt": {"numTokens": 10, "depth": "shallow"}},
    "vpt-deep": {"vpt": {"numTokens": 10, "depth": "deep"}},
}
PAIRS = [("lora", "peft-lora"), ("promptTuning", "peft-promptTuning"), ("pTuning", "peft-pTuning"),
         ("prefixTuning", "peft-prefixTuning"), ("adapter", "linear-probe"), ("vpt-shallow", "linear-probe"),
         ("vpt-deep", "linear-probe")]
VISION = {"adapter", "vpt-shallow", "vpt-deep", "linear-probe"}


def peft_config(name: str) -> Any:
    import peft

    return {
        "peft-lora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["c_attn"],
                                             fan_in_fan_out=True),
        "peft-promptTuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
        "peft-pTuning": lambda: peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=20,
                                                         encoder_hidden_size=128),
        "peft-prefixTuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20,
                                                             prefix_projection=True, encoder_hidden_size=512),
    }[name]()


def base_model(vision: bool) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    if vision:
        config = transformers.ViTConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=256, num_hidden_layers=4,
                                        num_attention_heads=4, intermediate_size=1024, num_labels=LABELS)
        return transformers.ViTForImageClassification(config)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=256, n_layer=4, n_head=4, n_positions=256,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def build(name: str) -> torch.nn.Module:
    """One configuration, attached to a freshly seeded base model, in train mode."""
    from peftjob_trainer.api.spec import MethodSpec
    from peftjob_trainer.methods import build_method

    task = "image-classification" if name in VISION else "causal-lm"
    model = base_model(name in VISION)
    torch.manual_seed(1)
    if name in OURS:
        model = build_method(MethodSpec.model_validate(OURS[name]), task).attach(model)
    elif name == "linear-probe":
        for param_name, param in model.named_parameters():
            param.requires_grad_(param_name.startswith("classifier."))
    else:
        import peft

        model = peft.get_peft_model(model, peft_config(name))
    return model.train()


def batch_for(name: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    if name in VISION:
        return {"pixel_values": torch.randn(BATCH, 3, IMAGE, IMAGE, generator=generator),
                "labels": torch.randint(0, LABELS, (BATCH,), generator=generator)}
    input_ids = torch.randint(1, VOCAB, (BATCH, LENGTH), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}


def stepper(name: str) -> tuple[Callable[[], None], int]:
    """(one AdamW training step, trainable parameter count) for a configuration."""
    model = build(name)
    batch = batch_for(name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in trainable)


def peak_bytes(step: Callable[[], None]) -> int:
    """Peak tensor bytes allocated during one step, above those live when it starts (CPU allocator events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        step()
    events = [e for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(name for pair in PAIRS for name in pair))
    steps = {name: stepper(name) for name in names}
    for step, _ in steps.values():  # warm-up: first-call allocations and lazy init stay out of the timings
        step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            start = time.perf_counter()
            steps[name][0]()
            times[name].append(time.perf_counter() - start)
    memory = {name: peak_bytes(steps[name][0]) for name in names}
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, {args.rounds} interleaved rounds")
    header = f"{'ours':<14}{'vs':<20}{'trainable':>11}{'vs':>11}{'ms/step':>9}{'vs':>9}{'time':>7}{'MiB':>8}{'vs':>8}{'mem':>7}"
    print(header)
    print("-" * len(header))
    for ours, other in PAIRS:
        time_ratio = median[ours] / median[other]
        memory_ratio = memory[ours] / max(memory[other], 1)
        print(f"{ours:<14}{other:<20}{steps[ours][1]:>11,}{steps[other][1]:>11,}"
              f"{median[ours] * 1e3:>9.1f}{median[other] * 1e3:>9.1f}{time_ratio:>7.2f}"
              f"{memory[ours] / 2**20:>8.1f}{memory[other] / 2**20:>8.1f}{memory_ratio:>7.2f}")
    print(f"goal for the peft pairs: time and mem ratios <= {GOAL}; adapter/VPT rows are against a linear probe")


if __name__ == "__main__":
    main()
