"""Reviews for the text tests: toy ones (the label is which of two word lists a review's sentiment words come
from), the real fine-food reviews of examples/food, and a shouted version of any (a drifted window)."""

from pathlib import Path

import numpy as np
import pandas as pd

GOOD = ["great", "tasty", "lovely", "delicious", "perfect", "wonderful", "fresh", "excellent"]
BAD = ["awful", "stale", "bland", "broken", "terrible", "rancid", "soggy", "horrible"]
FOOD = Path(__file__).resolve().parents[1] / "examples" / "food" / "data.csv"
FILLER = ["the", "tea", "was", "coffee", "snack", "really", "box", "this", "and", "price"]


def toy_reviews(n: int, seed: int = 0, filler: int = 5) -> pd.DataFrame:
    """`n` reviews, alternately "great" and "other": `filler` neutral words and two sentiment words, shuffled
    (trivially separable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["great", "other"][i % 2]
        words = list(rng.choice(FILLER, filler)) + list(rng.choice(GOOD if label == "great" else BAD, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def food_reviews() -> pd.DataFrame:
    """The 4,973 real fine-food reviews (examples/food/data.csv): their text column only."""
    return pd.read_csv(FOOD)[["text"]]


def shout(texts: pd.Series) -> pd.Series:
    """The same reviews in capitals, with an emoji (out of the uncased vocabulary) and a rating: a drifted window."""
    return texts.str.upper() + " 🦜 10/10!!!"
