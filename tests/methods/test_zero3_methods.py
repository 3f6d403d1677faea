"""ZeRO-3 safety: one launch of 2 CPU ranks under `deepspeed.zero.Init` attaches LoRA (and merges it), Prompt
Tuning (vocabulary init), P-Tuning and Prefix-Tuning, trains and exports exactly as one plain process does (real
torchrun + DeepSpeed processes, gloo). One launch for all methods, as each costs tens of seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.methods.tiny_models import tiny_model
from tests.methods.zero3_worker import LORA_LOGITS, METHODS, run
from peftjob_trainer.local_run import free_port

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("zero3_worker.py")
TOLERANCE = 1e-5  # fp32; the ranks reduce gradients in another order than one process sums them
FILES = ["adapter_model.safetensors", "trainable.safetensors"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(plain output, ZeRO-3 output) for the same saved tiny GPT-2, method specs, seed and batch."""
    root = tmp_path_factory.mktemp("zero3")
    model = tiny_model("gpt2", "causal-lm")
    model.config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    model.save_pretrained(root / "model")
    plain, zero3 = root / "plain", root / "zero3"
    plain.mkdir()
    zero3.mkdir()
    run(root / "model", plain, zero3=False)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(WORKER), str(root / "model"), str(zero3),
    ]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return plain, zero3


def results(path: Path) -> dict[str, Any]:
    """What a run recorded per method: counts, losses, whether the backbone was partitioned."""
    return json.loads((path / "result.json").read_text())


@pytest.mark.parametrize("method", METHODS)
def test_the_backbone_was_partitioned_and_counts_are_full_size(runs, method):
    plain, zero3 = runs
    assert results(zero3)[method]["partitioned"] and not results(plain)[method]["partitioned"]
    counts = results(zero3)[method]["counts"]
    assert counts == results(plain)[method]["counts"]
    assert counts[0] < counts[1]


@pytest.mark.parametrize("method", METHODS)
def test_losses_match_the_plain_process(runs, method):
    plain, zero3 = runs
    assert results(zero3)[method]["losses"] == pytest.approx(results(plain)[method]["losses"], abs=TOLERANCE)


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("method", METHODS)
def test_exported_adapter_matches_the_plain_process(runs, method, file):
    plain, zero3 = runs
    ours = load_file(zero3 / method / file)
    reference = load_file(plain / method / file)
    assert set(ours) == set(reference)
    for key, tensor in reference.items():
        assert ours[key].shape == tensor.shape
        assert torch.allclose(ours[key], tensor, atol=TOLERANCE), key


@pytest.mark.parametrize("file", FILES)
def test_lora_really_trained_under_zero3(runs, file):
    ours = load_file(runs[1] / "lora" / file)
    assert any(tensor.abs().max() > 0 for key, tensor in ours.items() if "lora_B" in key)


def test_lora_merge_under_zero3_keeps_the_outputs_and_matches_plain(runs):
    plain, zero3 = runs
    ours = torch.load(zero3 / LORA_LOGITS)
    reference = torch.load(plain / LORA_LOGITS)
    assert torch.allclose(ours["merged"], ours["unmerged"], atol=TOLERANCE)
    assert torch.allclose(ours["merged"], reference["merged"], atol=TOLERANCE)
