"""ZeRO-3 safety: 2 CPU ranks under `deepspeed.zero.Init` attach LoRA, train, export and merge exactly as one
plain process does (real torchrun + DeepSpeed processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.methods.tiny_models import tiny_model
from tests.methods.zero3_lora_worker import run

WORKER = Path(__file__).with_name("zero3_lora_worker.py")
TOLERANCE = 1e-5  # fp32; the ranks reduce gradients in another order than one process sums them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(plain output, ZeRO-3 output) for the same saved tiny GPT-2, LoRA spec, seed and batch."""
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


@pytest.mark.slow
def test_the_backbone_really_was_partitioned(runs):
    plain, zero3 = runs
    assert json.loads((zero3 / "result.json").read_text())["partitioned"]
    assert not json.loads((plain / "result.json").read_text())["partitioned"]


@pytest.mark.slow
def test_parameter_counts_are_full_size_under_zero3(runs):
    counts = [json.loads((out / "result.json").read_text())["counts"] for out in runs]
    assert counts[0] == counts[1]
    assert counts[0][0] < counts[0][1]


@pytest.mark.slow
def test_losses_match_the_plain_process(runs):
    plain, zero3 = runs
    ours = json.loads((zero3 / "result.json").read_text())["losses"]
    reference = json.loads((plain / "result.json").read_text())["losses"]
    assert ours == pytest.approx(reference, abs=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("file", ["adapter_model.safetensors", "trainable.safetensors"])
def test_exported_adapter_matches_the_plain_process(runs, file):
    plain, zero3 = runs
    ours = load_file(zero3 / "adapter" / file)
    reference = load_file(plain / "adapter" / file)
    assert set(ours) == set(reference)
    for key, tensor in reference.items():
        assert ours[key].shape == tensor.shape
        assert torch.allclose(ours[key], tensor, atol=TOLERANCE), key
    assert any(tensor.abs().max() > 0 for key, tensor in ours.items() if "lora_B" in key)  # it really trained


@pytest.mark.slow
def test_merge_under_zero3_keeps_the_outputs_and_matches_plain(runs):
    plain, zero3 = runs
    ours = torch.load(zero3 / "logits.pt")
    reference = torch.load(plain / "logits.pt")
    assert torch.allclose(ours["merged"], ours["unmerged"], atol=TOLERANCE)
    assert torch.allclose(ours["merged"], reference["merged"], atol=TOLERANCE)
