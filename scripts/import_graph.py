"""The import graph of peftjob's own modules, read from the source (ast, no imports executed).

  python scripts/import_graph.py            print the README's Mermaid picture of it
  python scripts/import_graph.py --check    exit 1 when README.md's picture is stale

The boundary tests read the same graph (tests/test_import_boundaries.py).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"peftjob_trainer": ROOT / "trainer", "peftjob_operator": ROOT / "operator"}
README = ROOT / "README.md"
BEGIN, END = "<!-- import-graph:begin (make import-graph) -->", "<!-- import-graph:end -->"


def modules() -> dict[str, Path]:
    """{dotted module name: source file} for every module of both packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, own: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in `path`, relative ones resolved, at any depth in the file;
    `from a import b` is module `a.b` when that is one of `own`, else `a`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in own else base), node.lineno


def graph() -> dict[str, dict[str, int]]:
    """{module: {own module it imports: first line}}, only edges between peftjob's own modules."""
    own = modules()
    edges: dict[str, dict[str, int]] = {}
    for module, path in own.items():
        targets: dict[str, int] = {}
        for name, line in imports_of(module, path, set(own)):
            if name in own and name != module:
                targets.setdefault(name, line)
        edges[module] = targets
    return edges


def _node(module: str) -> str:
    """The picture's box for a module: `api` and `methods` are one box each (their insides are a package of
    their own: see their __init__ docstrings), every other module is its own box."""
    parts = module.split(".")
    if parts[0] == "peftjob_trainer" and len(parts) > 1 and parts[1] in ("api", "methods"):
        return f"trainer.{parts[1]}"
    return ("operator" if parts[0] == "peftjob_operator" else "trainer") + "".join(f".{p}" for p in parts[1:])


def mermaid() -> str:
    """The graph as a Mermaid flowchart between boxes (see `_node`), operator modules on one side."""
    boxes: dict[str, set[str]] = {}
    for module, targets in graph().items():
        box = _node(module)
        boxes.setdefault(box, set())
        boxes[box] |= {_node(target) for target in targets} - {box}
    ids = {box: box.replace(".", "_") for box in boxes}
    lines = ["```mermaid", "flowchart LR"]
    for side in ("operator", "trainer"):
        lines.append(f"  subgraph {side}/")
        lines += [f'    {ids[box]}["{box.partition(".")[2] or "__init__"}"]' for box in sorted(boxes)
                  if box.split(".")[0] == side]
        lines.append("  end")
    for box in sorted(boxes):
        lines += [f"  {ids[box]} --> {ids[target]}" for target in sorted(boxes[box]) if target in ids]
    lines.append("```")
    return "\n".join(lines)


def readme_with_graph(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + mermaid() + "\n" + text[end:]


def main(argv: list[str]) -> int:
    text = README.read_text()
    if "--check" in argv:
        if readme_with_graph(text) != text:
            print("README.md's import graph is stale: run `make import-graph`", file=sys.stderr)
            return 1
        return 0
    if "--write" in argv:
        README.write_text(readme_with_graph(text))
        return 0
    print(mermaid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
