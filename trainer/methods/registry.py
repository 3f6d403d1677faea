"""Spec method name -> the class that implements it. Each method module registers itself with `@register`."""

from __future__ import annotations

from typing import TypeVar

from .base import PeftMethod

REGISTRY: dict[str, type[PeftMethod]] = {}
M = TypeVar("M", bound=type[PeftMethod])


def register(cls: M) -> M:
    """Class decorator of a method module: make `cls` the implementation of its `spec_name`."""
    if cls.spec_name in REGISTRY:
        raise RuntimeError(f"method {cls.spec_name} registered twice: {REGISTRY[cls.spec_name]} and {cls}")
    REGISTRY[cls.spec_name] = cls
    return cls
