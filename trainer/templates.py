"""P-Tuning templates as token ids: '[P][P] {text} [P] It was' around one input.

Data encoding builds input_ids with `template_input_ids`; the P-Tuning method writes its encoder's outputs at
the PSEUDO_TOKEN_ID positions. Here, apart from both, so that data never imports a method.
"""

from __future__ import annotations

import re
from typing import Any

from .tokens import PSEUDO_TOKEN_ID

_TEMPLATE_PARTS = re.compile(r"(\[P\]|\{text\})")


def template_input_ids(tokenizer: Any, template: str, text: str, max_length: int) -> list[int]:
    """input_ids for one example: the template's text, the input, PSEUDO_TOKEN_ID at every [P].

    The tokenizer's special tokens ([CLS] ... [SEP], BOS) wrap the whole (transformers 5 tokenizers have no
    build_inputs_with_special_tokens, so they are read off a probe); only the input is truncated, so the
    pseudo tokens and the discrete prompt always survive.
    """
    pieces: list[list[int] | str] = []
    for part in _TEMPLATE_PARTS.split(template):
        if part == "[P]":
            pieces.append([PSEUDO_TOKEN_ID])
        elif part == "{text}":
            pieces.append("{text}")
        elif part.strip():
            pieces.append(tokenizer(part.strip(), add_special_tokens=False)["input_ids"])
    before, after = special_tokens_around(tokenizer)
    fixed = sum(len(piece) for piece in pieces if isinstance(piece, list)) + len(before) + len(after)
    if fixed >= max_length:
        raise ValueError(f"pTuning.template: needs {fixed} tokens, more than data.maxLength {max_length}")
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - fixed]
    ids = [token for piece in pieces for token in (text_ids if piece == "{text}" else piece)]
    return before + ids + after


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], BOS, nothing)."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(wrapped)) if wrapped[i : i + len(probe)] == probe)
    return wrapped[:start], wrapped[start + len(probe) :]
