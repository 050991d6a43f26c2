"""One-off: write MNIST-1D (Greydanus 2020) as `data.csv`, so the example runs offline with no pickle.

MNIST-1D is generated, not downloaded: the `mnist1d` wheel (PyPI, 0.0.2.post1) ships the ten 1-D digit
templates and the transformations (padding, translation, shear, scaling, correlated and iid noise), and
`make_dataset(get_dataset_args())` draws the standard 5,000 examples of 40 values from seed 42 (4,000 train,
1,000 test in the paper). Only `make_dataset` is called; `get_dataset` (which would download or unpickle a
file) is never used.

    pip install mnist1d==0.0.2.post1 && python examples/mnist1d/make_data.py

Columns: x0 … x39 (the signal, float), label (0–9). Rows keep the generator's order: the first 4,000 are the
paper's training split, the last 1,000 its test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    assert x.shape == (args.num_samples, args.final_seq_length), x.shape
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    df["label"] = y
    out = Path(__file__).resolve().parent / "data.csv"
    df.to_csv(out, index=False, float_format="%.5g")
    print(f"wrote {out}: {len(df)} rows x {df.shape[1]} columns, {out.stat().st_size:,} bytes; "
          f"classes {np.bincount(y).tolist()}")


if __name__ == "__main__":
    main()
