"""ZeRO-3 safety of the prompt methods: 2 CPU ranks under `deepspeed.zero.Init` attach Prompt Tuning (vocabulary
init), P-Tuning and Prefix-Tuning, train, and export exactly what one plain process does (real torchrun + DeepSpeed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.methods.test_zero3_methods import TOLERANCE, free_port
from tests.methods.tiny_models import tiny_model
from tests.methods.zero3_prompt_worker import METHODS, run

WORKER = Path(__file__).with_name("zero3_prompt_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(plain output, ZeRO-3 output) for the same saved tiny GPT-2, specs, seed and batch."""
    root = tmp_path_factory.mktemp("zero3_prompt")
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
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return plain, zero3


def results(path: Path) -> dict:
    return json.loads((path / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_the_backbone_was_partitioned_and_counts_are_full_size(runs, method):
    plain, zero3 = runs
    assert results(zero3)[method]["partitioned"] and not results(plain)[method]["partitioned"]
    assert results(zero3)[method]["counts"] == results(plain)[method]["counts"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_losses_match_the_plain_process(runs, method):
    plain, zero3 = runs
    assert results(zero3)[method]["losses"] == pytest.approx(results(plain)[method]["losses"], abs=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("file", ["adapter_model.safetensors", "trainable.safetensors"])
@pytest.mark.parametrize("method", METHODS)
def test_exported_adapter_matches_the_plain_process(runs, method, file):
    plain, zero3 = runs
    ours = load_file(zero3 / method / file)
    reference = load_file(plain / method / file)
    assert set(ours) == set(reference)
    for key, tensor in reference.items():
        assert ours[key].shape == tensor.shape
        assert torch.allclose(ours[key], tensor, atol=TOLERANCE), key
