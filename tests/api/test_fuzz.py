"""Arbitrary input never escapes as anything but a clean validation error."""

from __future__ import annotations

import copy

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from peftjob_trainer.api import InvalidSpec, PEFTJob, load_object, load_text

from tests.api.test_invalid_specs import VALID

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _clean(outcome: object) -> None:
    assert isinstance(outcome, PEFTJob | InvalidSpec)
    if isinstance(outcome, InvalidSpec):
        assert outcome.problems and all(isinstance(p, str) and p for p in outcome.problems)


def _attempt(call, arg) -> object:  # noqa: ANN001 - any loader, any input
    try:
        return call(arg)
    except InvalidSpec as invalid:
        return invalid


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _clean(_attempt(load_text, text))


@settings(max_examples=300, deadline=None)
@given(values)
def test_arbitrary_yaml_values(value: object) -> None:
    _clean(_attempt(load_text, yaml.safe_dump(value)))


SECTIONS = ["model", "method", "data", "training", "deepspeed", "workers", "tracking", "output", "runPolicy"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SECTIONS), st.text(max_size=16), values)
def test_arbitrary_fields_inside_a_valid_job(section: str, key: str, value: object) -> None:
    doc = copy.deepcopy(VALID)
    target = doc["spec"].setdefault(section, {})
    if isinstance(target, dict):
        target[key] = value
    _clean(_attempt(load_object, doc))
