"""The `peftjob` command: validate, render, run and print the CRD.

`validate` and `crd` need only the base install (pydantic + PyYAML); `render` needs nothing more either;
`run` starts the trainer locally and needs the `trainer` extra. Every user error ends in a message naming the
field and the reason, and an exit code: never a traceback.

`validate` also runs the trainer's preflight checks that need nothing but this machine (a local model
folder's files, config and positions, a local output folder's writability), and both `validate` and
`render` warn, without failing, about relative local paths, which a cluster pod will not have. These commands
work on the user's machine, so they (and `run`) are where the operator package uses trainer modules beyond the
API: torch-free ones, imported when the command runs (tests/test_import_boundaries.py lists them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from peftjob_trainer.api import InvalidSpec, PEFTJob, load_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftjob", description="Parameter-efficient fine-tuning jobs.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check PEFTJob files against the API")
    validate.add_argument("files", nargs="+")
    render = commands.add_parser("render", help="print the Kubernetes objects the operator would create")
    render.add_argument("file")
    run = commands.add_parser("run", help="run a PEFTJob locally, as the pods would")
    run.add_argument("file")
    commands.add_parser("crd", help="print the CustomResourceDefinition generated from the API model")
    args = parser.parse_args(argv)
    return {"validate": _validate, "render": _render, "run": _run, "crd": _crd}[args.command](args)


def _validate(args: argparse.Namespace) -> int:
    from peftjob_trainer.preflight import offline_check  # torch-free: the trainer's own checks, run here

    failed = False
    for path in args.files:
        job = _load_or_report(path)
        if job is None:
            failed = True
            continue
        errors, warnings = offline_check(job, Path(path).parent)
        if errors:
            failed = True
            _report(path, errors)
        else:
            print(f"{path}: valid PEFTJob {job.metadata.name!r} ({job.spec.method.name} on {job.spec.model.source})")
        _warn(path, warnings)
    return 1 if failed else 0


def _render(args: argparse.Namespace) -> int:
    from peftjob_operator.render import render_job
    from peftjob_trainer.preflight import relative_path_warnings

    job = _load_or_report(args.file)
    if job is None:
        return 1
    _warn(args.file, relative_path_warnings(job.spec))
    print(yaml.safe_dump_all(render_job(job), sort_keys=False), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        from peftjob_trainer.local_run import main as run_locally
    except ImportError as error:
        print(f"peftjob run needs the trainer extra (pip install 'peftjob[trainer]'): {error}", file=sys.stderr)
        return 1
    return run_locally(args.file)


def _crd(_: argparse.Namespace) -> int:
    from peftjob_trainer.api.crd import crd_yaml

    print(crd_yaml(), end="")
    return 0


def _load_or_report(path: str) -> PEFTJob | None:
    try:
        return load_file(path)
    except InvalidSpec as invalid:
        _report(path, invalid.problems)
        return None


def _report(path: str, problems: list[str]) -> None:
    print(f"{path}: invalid", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _warn(path: str, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
