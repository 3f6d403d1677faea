"""Resume is exact: an interrupted run resumed from checkpoint step k trains the same weights, losses and final
adapter (sha256) as the uninterrupted run, with dropout active in the backbone and in the method, because every
RNG a rank draws from and the data position are in the checkpoint.

The interruption is real: SIGKILL of the ranks once the first checkpoint is complete (2 ranks), and a finished
shorter run extended to the full length (1 rank). The learning rate is constant so that a run extended from
fewer steps follows the same schedule as one planned for all of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.trainer import tiny
from tests.trainer.local_job import LAUNCH_TIMEOUT, finish, launch

pytestmark = pytest.mark.slow
STEPS, EVERY = 40, 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tiny.sentiment_folder(tmp_path_factory.mktemp("exact"), 64, 16, dropout=0.1)


def job(processes: int, steps: int = STEPS) -> dict[str, Any]:
    return {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {"r": 4, "dropout": 0.1, "targetModules": ["query", "value"]}},
        "data": {"train": {"source": "train.jsonl"}, "eval": {"source": "eval.jsonl"}, "maxLength": 16},
        "training": {"maxSteps": steps, "microBatchSize": 4, "learningRate": 0.01, "scheduler": "constant",
                     "logInterval": 1, "checkpointInterval": EVERY, "seed": 5},
        "workers": {"processesPerWorker": processes},
        "output": {"uri": "out"},
    }


def result(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / ".peftjob" / name / "result.json").read_text())


def losses(output: str) -> dict[int, str]:
    """{step: its logged loss} from the `step N/40: loss=...` lines."""
    found = {}
    for line in output.splitlines():
        if f"/{STEPS}: loss=" in line:
            where = line.split("step ", 1)[1]
            found[int(where.split("/", 1)[0])] = where.split("loss=", 1)[1].split()[0]
    return found


def test_a_resumed_run_ends_with_the_same_adapter_as_the_uninterrupted_one(workdir):
    whole = {size: launch(workdir, f"whole{size}", job(size), {}) for size in (1, 2)}
    killed = launch(workdir, "killed2", job(2), {})
    shorter = launch(workdir, "extended1", job(1, steps=STEPS // 2), {})

    manifest = workdir / "out" / "killed2" / "checkpoints" / f"step-{EVERY:08d}" / "manifest.json"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not manifest.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for rank in psutil.Process(killed.pid).children(recursive=True):
        rank.kill()
    code, _ = finish(killed)
    assert code != 0, "the gang died with its ranks"
    code, output = finish(shorter)
    assert code == 0, output[-3000:]

    resumed = {2: launch(workdir, "killed2", job(2), {}), 1: launch(workdir, "extended1", job(1), {})}
    for size in (1, 2):
        code, uninterrupted = finish(whole[size])
        assert code == 0, uninterrupted[-3000:]
        code, again = finish(resumed[size])
        assert code == 0, again[-3000:]
        reference, outcome = result(workdir, f"whole{size}"), result(workdir, "killed2" if size == 2 else "extended1")
        assert 0 < outcome["resumedFromStep"] < STEPS
        later = {step: loss for step, loss in losses(again).items() if step > outcome["resumedFromStep"]}
        assert later and later == {step: losses(uninterrupted)[step] for step in later}
        assert outcome["sha256"] == reference["sha256"], f"{size} rank(s): the resumed adapter differs"
