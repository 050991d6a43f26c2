"""Text models on token ids (N, L) int64, padded with 0: a compact BERT encoder that loads the pretrained
MiniLM weights, and two tiny models (an embedding bag, a CNN).

- `minilm`: the pretrained encoder (all-MiniLM-L6-v2, 6 layers, hidden 384) + mean pooling over the
  tokens + a linear head; `layers` keeps the bottom N layers (0: all), `tune_layers` trains only the top
  k (0: the encoder frozen, only the head trains; -1: everything).
- `minilm_layers`: DistilBERT's student (Sanh et al. 2019): the same architecture with every other
  layer (0, 2, 4 of 6), initialised from the pretrained encoder and, in `kd.distill`, from the trained
  teacher itself (`init_from_teacher`: embeddings, layers 0, 2, 4, head).
- `embbag`: a token-embedding bag (mean over non-pad tokens, Joulin et al. 2017's fastText without
  n-grams) + `depth` ReLU layers of `width` + a linear head.
- `textcnn`: Kim (2014)'s CNN for sentence classification: token embeddings, `width` filters of each of
  widths 3, 4 and 5, ReLU, max over the non-pad positions, a linear head.

Why not transformers' BertModel: the same weights run here in about 60 lines of plain torch whose graph
exports to ONNX and quantizes cleanly, import in milliseconds, never touch the network, and expose the
hidden states as a submodule (`features`) that feature losses hook. A test checks this encoder against
transformers' BertModel on the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kd.text import PAD_ID, bert_config, pretrained_weights


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden, padding_idx=PAD_ID)
        self.position = nn.Embedding(positions, hidden)
        self.token_type = nn.Embedding(types, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return self.norm(self.word(ids) + self.position(pos) + self.token_type.weight[0])


class _Layer(nn.Module):
    """A post-norm BERT layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(self, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.heads, self.scale = heads, 1 / math.sqrt(hidden // heads)
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.inner, self.out, self.out_norm = nn.Linear(hidden, inner), nn.Linear(inner, hidden), nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        att = (q @ k.transpose(-1, -2)) * self.scale + bias
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = self.attn_norm(h + self.attn_out(ctx))
        return self.out_norm(h + self.out(nn.functional.gelu(self.inner(h))))


class Encoder(nn.Module):
    """Token ids (B, L) -> hidden states of the last layer (B, L, H); pad positions are masked out of attention."""

    def __init__(self, cfg: dict, n_layers: int):
        super().__init__()
        eps = cfg.get("layer_norm_eps", 1e-12)
        self.embeddings = _Embeddings(cfg["vocab_size"], cfg["hidden_size"], cfg["max_position_embeddings"], cfg["type_vocab_size"], eps)
        self.layers = nn.ModuleList(_Layer(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], eps) for _ in range(n_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bias = ((ids == PAD_ID).to(torch.float32) * -1e4)[:, None, None, :]
        h = self.embeddings(ids)
        for layer in self.layers:
            h = layer(h, bias)
        return h

    def load_pretrained(self, weights: dict, source_layers: list[int]) -> None:
        """Copy the Hugging Face BERT weights (`encoder.layer.<i>.…` names) of `source_layers` into this encoder's layers."""
        own = {"embeddings.word.weight": "embeddings.word_embeddings.weight",
               "embeddings.position.weight": "embeddings.position_embeddings.weight",
               "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
               "embeddings.norm.weight": "embeddings.LayerNorm.weight", "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
        names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                 "inner": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}
        for j, i in enumerate(source_layers):
            for mine, theirs in names.items():
                for p in ("weight", "bias"):
                    own[f"layers.{j}.{mine}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        self.load_state_dict({k: weights[v] for k, v in own.items()})


def _masked_mean(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    m = (ids != PAD_ID).to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextTransformer(nn.Module):
    """Encoder (`features`: hidden states) + mean pooling over tokens + dropout + linear head (`head`)."""

    input_dtype = torch.int64

    def __init__(self, cfg: dict, n_layers: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = Encoder(cfg, n_layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg["hidden_size"], n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(_masked_mean(self.features(ids), ids)))

    def freeze_below(self, tune_layers: int) -> None:
        """Train only the top `tune_layers` layers (and the head); -1 trains everything."""
        if tune_layers < 0:
            return
        frozen = [self.features.embeddings, *self.features.layers[: max(len(self.features.layers) - tune_layers, 0)]]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def init_from_teacher(self, teacher: nn.Module) -> None:
        """DistilBERT's initialisation (Sanh et al. 2019): embeddings, every other layer (0, 2, 4, …) and the head
        copied from the teacher."""
        if not isinstance(teacher, TextTransformer):
            raise ValueError(f"minilm_layers initialises from a minilm teacher, not {type(teacher).__name__}")
        src = teacher.features.layers
        picks = list(range(0, len(src), 2))
        if len(picks) != len(self.features.layers):
            raise ValueError(f"the student has {len(self.features.layers)} layers, every other layer of the teacher is {len(picks)}")
        with torch.no_grad():
            self.features.embeddings.load_state_dict(teacher.features.embeddings.state_dict())
            for j, i in enumerate(picks):
                self.features.layers[j].load_state_dict(src[i].state_dict())
            self.head.load_state_dict(teacher.head.state_dict())


def _teacher_layers(layers: int, cfg: dict) -> int:
    total = cfg["num_hidden_layers"]
    if layers > total:
        raise ValueError(f"layers {layers}: the pretrained encoder has {total}")
    return layers or total


def minilm(input_shape, n_classes: int, dropout: float = 0.0, layers: int = 0, tune_layers: int = -1, **_) -> nn.Module:
    """The pretrained MiniLM encoder (its bottom `layers`, 0: all) with a mean-pooling classifier head."""
    cfg = bert_config()
    n = _teacher_layers(layers, cfg)
    _check_length(input_shape, cfg)
    model = TextTransformer(cfg, n, n_classes, dropout)
    model.features.load_pretrained(pretrained_weights(), list(range(n)))
    model.freeze_below(tune_layers)
    return model


def minilm_layers(input_shape, n_classes: int, dropout: float = 0.0, layers: int = 0, tune_layers: int = -1, **_) -> nn.Module:
    """Every other layer of a `layers`-layer MiniLM (0, 2, 4 of 6), from the pretrained weights."""
    cfg = bert_config()
    picks = list(range(0, _teacher_layers(layers, cfg), 2))
    _check_length(input_shape, cfg)
    model = TextTransformer(cfg, len(picks), n_classes, dropout)
    model.features.load_pretrained(pretrained_weights(), picks)
    model.freeze_below(tune_layers)
    return model


class BagEncoder(nn.Module):
    """Token embeddings averaged over the non-pad tokens, then `depth` ReLU layers."""

    def __init__(self, vocab: int, width: int, depth: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=PAD_ID)
        self.mlp = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(_masked_mean(self.embed(ids), ids))


class EmbeddingBag(nn.Module):
    input_dtype = torch.int64

    def __init__(self, vocab: int, width: int, depth: int, n_classes: int, dropout: float):
        super().__init__()
        self.features = BagEncoder(vocab, width, depth)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(ids)))


def embbag(input_shape, n_classes: int, width: int = 64, depth: int = 1, dropout: float = 0.0, **_) -> nn.Module:
    """A tiny non-transformer text model over the tokenizer's vocabulary."""
    return EmbeddingBag(bert_config()["vocab_size"], width, depth, n_classes, dropout)


class ConvEncoder(nn.Module):
    """Token embeddings, one 1-d convolution per kernel width (same length, zero padding), ReLU, and the
    maximum over the non-pad positions. Pad tokens embed to zero (padding_idx) like the convolution's own
    padding, so a review gives the same features whatever padding follows it."""

    def __init__(self, vocab: int, width: int, kernels: tuple[int, ...]):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, k, padding=k // 2) for k in kernels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids).transpose(1, 2)  # (N, width, L)
        real = (ids != PAD_ID).unsqueeze(1).to(e.dtype)
        # ReLU outputs are >= 0, so zeroing the pad positions leaves the maximum over the real ones
        return torch.cat([(torch.relu(conv(e)[..., : ids.shape[1]]) * real).amax(2) for conv in self.convs], 1)


class TextCNN(nn.Module):
    input_dtype = torch.int64

    def __init__(self, vocab: int, width: int, n_classes: int, dropout: float, kernels: tuple[int, ...] = (3, 4, 5)):
        super().__init__()
        self.features = ConvEncoder(vocab, width, kernels)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width * len(kernels), n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(ids)))


def textcnn(input_shape, n_classes: int, width: int = 64, dropout: float = 0.0, **_) -> nn.Module:
    """A tiny convolutional text model (Kim 2014) over the tokenizer's vocabulary."""
    return TextCNN(bert_config()["vocab_size"], width, n_classes, dropout)


def _check_length(input_shape, cfg: dict) -> None:
    if len(input_shape) != 1 or input_shape[0] > cfg["max_position_embeddings"]:
        raise ValueError(f"a transformer reads token ids (max_length,) up to {cfg['max_position_embeddings']}; this data set's input shape is {tuple(input_shape)}")


TEXT_ARCHITECTURES = {"minilm": minilm, "minilm_layers": minilm_layers, "embbag": embbag, "textcnn": textcnn}
