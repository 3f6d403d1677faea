#!/usr/bin/env bash
# The one install script: the Dockerfile's stages and `make setup` (hence CI) run it.
#   scripts/install.sh operator|trainer|dev [PYTHON]
# torch is installed first and pinned: any looser spelling asked for first pulls a multi-GB CUDA build on CPU
# machines. DeepSpeed builds without isolation so its build sees that torch instead of fetching another one.
set -euo pipefail
# The repository root holds operator/, which would shadow the standard library's `operator` for `python -m`
# started here (before anything else imported it); safe-path mode keeps the working directory off sys.path.
export PYTHONSAFEPATH=1
target="${1:?usage: scripts/install.sh operator|trainer|dev [python]}"
python="${2:-python}"
torch_spec="${PEFTJOB_TORCH_SPEC:-torch==2.13.0}"
here="$(cd "$(dirname "$0")/.." && pwd)"
editable=()
[ "$target" = dev ] && editable=(-e)

"$python" -m pip install --quiet --upgrade pip
case "$target" in
  operator)
    "$python" -m pip install --quiet "${here}[operator]"
    ;;
  trainer|dev)
    "$python" -m pip install --quiet "$torch_spec"
    DS_BUILD_OPS=0 "$python" -m pip install --quiet --no-build-isolation "deepspeed>=0.15"
    "$python" -m pip install --quiet "${editable[@]}" "${here}[${target}]"
    ;;
  *)
    echo "unknown target: $target (operator, trainer or dev)" >&2
    exit 2
    ;;
esac
