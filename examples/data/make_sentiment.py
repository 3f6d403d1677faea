"""Generate the CPU quickstart's sentiment data set (examples/data/sentiment-{train,eval}.jsonl).

Short English reviews built from templates, with positive (label 1) or negative (label 0) wording. The
evaluation set uses nouns the training set never shows, so accuracy measures more than memorisation.
Deterministic: run it again and the files are byte-identical. Usage: python examples/data/make_sentiment.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["wonderful", "excellent", "delightful", "superb", "brilliant", "charming", "enjoyable", "fantastic",
            "great", "moving", "lovely", "impressive", "pleasant", "outstanding", "fun"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "disappointing", "horrible", "dull", "painful",
            "mediocre", "bad", "tedious", "annoying", "clumsy", "forgettable", "unpleasant"]
TRAIN_NOUNS = ["movie", "film", "plot", "acting", "soundtrack", "service", "meal", "book", "hotel room",
               "phone", "concert", "show", "dessert", "story", "trip", "camera"]
EVAL_NOUNS = ["album", "restaurant", "novel", "series", "laptop", "play"]
TEMPLATES = [
    "The {noun} was {adj}.",
    "I found the {noun} {adv} {adj}.",
    "What a {adj} {noun}!",
    "Honestly, the {noun} felt {adj} from start to finish.",
    "My friends thought the {noun} was {adj}, and I agree.",
    "It is a {adv} {adj} {noun}.",
    "Overall the {noun} was {adv} {adj}, would say the same again.",
]
ADVERBS = ["really", "truly", "quite", "very", "rather", "simply"]


def reviews(count: int, nouns: list[str], seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randrange(2)
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        text = rng.choice(TEMPLATES).format(noun=rng.choice(nouns), adj=adjective, adv=rng.choice(ADVERBS))
        rows.append({"text": text, "label": label})
    return rows


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    here = Path(__file__).parent
    write(here / "sentiment-train.jsonl", reviews(800, TRAIN_NOUNS, seed=1))
    write(here / "sentiment-eval.jsonl", reviews(200, EVAL_NOUNS, seed=2))


if __name__ == "__main__":
    main()
