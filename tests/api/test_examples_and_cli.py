"""Every example is a valid PEFTJob; the `peftjob` console script reports problems field by field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PEFTJOB = shutil.which("peftjob", path=str(Path(sys.executable).parent)) or "peftjob"


def peftjob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PEFTJOB, *args], capture_output=True, text=True, cwd=ROOT)


def test_every_example_validates() -> None:
    assert len(EXAMPLES) >= 7
    result = peftjob("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid PEFTJob") == len(EXAMPLES)


def test_examples_cover_every_method() -> None:
    methods = {next(iter(yaml.safe_load(p.read_text())["spec"]["method"])) for p in EXAMPLES}
    assert methods == {"lora", "adapter", "prefixTuning", "promptTuning", "pTuning", "vpt"}


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    broken = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    broken["spec"]["method"]["lora"]["r"] = 0
    broken["spec"]["training"]["microBatchSize"] = 0
    broken["spec"]["workers"]["replicaz"] = 2
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = peftjob("validate", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "spec.method.lora.r: Input should be greater than 0" in result.stderr
    assert "spec.training.microBatchSize: Input should be greater than 0" in result.stderr
    assert "spec.workers.replicaz: unknown field; did you mean 'replicas'?" in result.stderr


@pytest.mark.parametrize("content", ["spec: [", "", "a: 1\n---\nb: 2\n"])
def test_validate_never_prints_a_traceback(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = peftjob("validate", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "(document)" in result.stderr


def test_validate_names_a_missing_file() -> None:
    result = peftjob("validate", "no-such-file.yaml")
    assert result.returncode == 1 and "no-such-file.yaml: cannot read" in result.stderr


def test_operator_package_does_not_import_torch() -> None:
    code = (
        "import sys, peftjob_operator, peftjob_operator.cli, peftjob_trainer.api, peftjob_trainer.api.contract\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.iter_modules(peftjob_operator.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('peftjob_operator.' + m.name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'deepspeed' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
