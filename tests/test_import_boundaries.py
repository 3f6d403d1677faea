"""The layering, checked on the source's import graph (scripts/import_graph.py, which also draws the README's
picture): the operator depends on the trainer's API package only, the API package on nothing of ours outside
it, method modules never on each other, data never on a method, the trainer never on the operator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.import_graph import README, ROOT, graph, modules

API = "peftjob_trainer.api"
# The documented exceptions, the CLI's local commands: `peftjob run` starts the trainer's local runner, and
# `validate`/`render` run the trainer's torch-free offline preflight checks on the user's machine.
OPERATOR_EXCEPTIONS = {("peftjob_operator.cli", "peftjob_trainer.local_run"),
                       ("peftjob_operator.cli", "peftjob_trainer.preflight")}
API_THIRD_PARTY = {"pydantic", "yaml"}


def method_modules() -> set[str]:
    """Modules of peftjob_trainer.methods that register a method (the others are shared helpers)."""
    return {name for name, path in modules().items()
            if name.startswith("peftjob_trainer.methods.") and "\n@register\n" in path.read_text()}


def violations(edges: dict[str, dict[str, int]], methods: set[str]) -> list[str]:
    """Every import that breaks a layering rule, as `module:line imports target (rule)`."""
    found = []
    for module, targets in edges.items():
        for target, line in targets.items():
            where = f"{module}:{line} imports {target}"
            within_api = target == API or target.startswith(API + ".")
            if module.startswith("peftjob_operator") and target.startswith("peftjob_trainer") and not within_api \
                    and (module, target) not in OPERATOR_EXCEPTIONS:
                found.append(f"{where} (the operator depends on {API} only)")
            if module.startswith(API) and not within_api:
                found.append(f"{where} ({API} imports nothing of ours outside itself)")
            if module in methods and target in methods:
                found.append(f"{where} (method modules stand alone: shared code goes in a helper module)")
            if module == "peftjob_trainer.data" and target.startswith("peftjob_trainer.methods"):
                found.append(f"{where} (data encoding never imports a method)")
            if module.startswith("peftjob_trainer") and target.startswith("peftjob_operator"):
                found.append(f"{where} (the trainer never imports the operator)")
    return found


def test_the_source_keeps_every_layering_rule():
    assert violations(graph(), method_modules()) == []


def test_six_method_modules_are_recognised():
    assert len(method_modules()) == 6


@pytest.mark.parametrize(
    ("module", "target"),
    [("peftjob_operator.handlers", "peftjob_trainer.loop"), ("peftjob_trainer.api.spec", "peftjob_trainer.methods"),
     ("peftjob_trainer.methods.p_tuning", "peftjob_trainer.methods.prompt_tuning"),
     ("peftjob_trainer.data", "peftjob_trainer.methods.p_tuning"),
     ("peftjob_trainer.loop", "peftjob_operator.status")],
)
def test_a_forbidden_import_is_reported_with_its_line(module, target):
    edges = {name: dict(targets) for name, targets in graph().items()}
    edges[module][target] = 99
    assert [v for v in violations(edges, method_modules()) if v.startswith(f"{module}:99 imports {target}")]


def test_the_api_package_needs_only_pydantic_and_yaml():
    from scripts.import_graph import imports_of

    own = set(modules())
    for name, path in modules().items():
        if not name.startswith(API):
            continue
        for imported, line in imports_of(name, path, own):
            top = imported.split(".")[0]
            assert top in sys.stdlib_module_names or top in API_THIRD_PARTY or imported.startswith(API), \
                f"{path.relative_to(ROOT)}:{line} imports {imported}"


def test_the_readme_shows_the_current_import_graph():
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert Path(README).read_text().count("```mermaid") >= 1
