"""The six PEFT methods behind one interface (`PeftMethod`), one file each, looked up by their spec name.

Method modules are imported lazily by `build_method`, so adding a method never touches the others (this
package needs torch; the torch-free API model lives in `peftjob_trainer.api`).
"""

from __future__ import annotations

from importlib import import_module

from ..api.spec import MethodSpec
from .base import PeftMethod
from .params import parameter_counts

REGISTRY: dict[str, tuple[str, str]] = {
    "lora": ("lora", "Lora"),
    "adapter": ("adapter", "Adapter"),
    "vpt": ("vpt", "Vpt"),
    "promptTuning": ("prompt_tuning", "PromptTuning"),
    "pTuning": ("p_tuning", "PTuning"),
    "prefixTuning": ("prefix_tuning", "PrefixTuning"),
}
"""Spec method name -> (module in this package, class)."""


def method_class(name: str) -> type[PeftMethod]:
    """The class implementing spec method `name`."""
    module, cls = REGISTRY[name]
    return getattr(import_module(f".{module}", __name__), cls)


def build_method(method: MethodSpec, task: str) -> PeftMethod:
    """The chosen method, bound to its hyperparameters and the model's task (nothing is attached yet)."""
    return method_class(method.name)(method.config, task)


__all__ = ["REGISTRY", "PeftMethod", "build_method", "method_class", "parameter_counts"]
