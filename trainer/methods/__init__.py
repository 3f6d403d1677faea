"""The six PEFT methods behind one interface (`PeftMethod`), one file each, looked up by their spec name.

Every module of this package is imported here once, so a method file registers itself (`@register`) and
adding a method never touches the others. Shared helpers (base, families, params, peft_format, saving, zero,
prompt_wrapper) register nothing. This package needs torch; the torch-free API model is `peftjob_trainer.api`.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from ..api.spec import MethodSpec
from .base import PeftMethod
from .params import parameter_counts
from .registry import REGISTRY

for _module in pkgutil.iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")


def method_class(name: str) -> type[PeftMethod]:
    """The class implementing spec method `name`."""
    return REGISTRY[name]


def build_method(method: MethodSpec, task: str) -> PeftMethod:
    """The chosen method, bound to its hyperparameters and the model's task (nothing is attached yet)."""
    return method_class(method.name)(method.config, task)


__all__ = ["REGISTRY", "PeftMethod", "build_method", "method_class", "parameter_counts"]
