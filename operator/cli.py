"""The `peftjob` command: validate, render, run and print the CRD.

`validate` and `crd` need only the base install (pydantic + PyYAML); `render` needs nothing more either;
`run` starts the trainer locally and needs the `trainer` extra. Every user error ends in a message naming the
field and the reason, and an exit code: never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    failed = False
    for path in args.files:
        try:
            job = load_file(path)
        except InvalidSpec as invalid:
            failed = True
            print(f"{path}: invalid", file=sys.stderr)
            for problem in invalid.problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"{path}: valid PEFTJob {job.metadata.name!r} ({job.spec.method.name} on {job.spec.model.source})")
    return 1 if failed else 0


def _render(args: argparse.Namespace) -> int:
    from peftjob_operator.render import render_job

    job = _load_or_report(args.file)
    if job is None:
        return 1
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
        print(f"{path}: invalid", file=sys.stderr)
        for problem in invalid.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
