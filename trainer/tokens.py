"""Token-level conventions that data encoding and the methods both rely on, defined once."""

IGNORE_INDEX = -100
"""The label value Hugging Face losses skip: prompts, padding and virtual tokens never count."""

PSEUDO_TOKEN_ID = -1
"""input_ids value the data pipeline puts where a P-Tuning template's pseudo token goes (never a real id)."""
