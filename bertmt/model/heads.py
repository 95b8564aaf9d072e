"""Task heads: sentence pooling (or a BiLSTM / CNN over the tokens, token_heads.py), pair features (siamese)
and an MLP per task."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bertmt.model.bert import EncoderOutput

Pooling = Literal["mean", "max", "cls", "pooler", "attention"]
HeadArch = Literal["mlp", "lstm", "cnn"]
PairFeatures = Literal["concat", "cosine", "both"]


class Pooler(nn.Module):
    """One vector per sequence: masked mean of the tokens, their masked elementwise max, the [CLS] state,
    BERT's tanh pooler, or learned multiplicative attention over the tokens (score_i = q . W h_i / sqrt(H),
    softmax over real tokens)."""

    def __init__(self, how: Pooling, width: int) -> None:
        super().__init__()
        self.how = how
        self.out_width = width
        if how == "attention":
            self.key = nn.Linear(width, width, bias=False)
            self.query = nn.Parameter(torch.zeros(width))  # zero: starts as the plain masked mean

    def forward(self, out: EncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        h = out.last_hidden_state  # (B, L, H)
        if self.how == "cls":
            return h[:, 0]
        if self.how == "pooler":
            return out.pooler_output
        mask = attention_mask.bool()  # (B, L)
        if self.how == "max":
            return h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
        if self.how == "attention":
            scores = self.key(h) @ self.query / h.size(-1) ** 0.5  # (B, L)
            weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
            return (weights.unsqueeze(-1) * h).sum(1)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def mlp(in_size: int, out_size: int, hidden: list[int], dropout: float, output_bias: float) -> nn.Sequential:
    """dropout -> [Linear -> GELU -> dropout] x len(hidden) -> Linear(out_size)."""
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    for width in hidden:
        layers += [nn.Linear(in_size, width), nn.GELU(), nn.Dropout(dropout)]
        in_size = width
    layers.append(nn.Linear(in_size, out_size))
    nn.init.constant_(layers[-1].bias, output_bias)  # e.g. the middle of a regression target's range
    return nn.Sequential(*layers)


class ScaledCosine(nn.Module):
    """``scale * cos(u, v) + shift`` with learnable scale and shift; clipped to ``clip`` when given (a
    regression target's range). A regression head starts mapping cos in [0, 1] onto the clip range, as
    Sentence-BERT's cosine loss does (a sentence encoder's cosines of unrelated sentences are near 0, not -1;
    two scalars at the encoder's learning rate barely move, so a worse start is corrected by distorting the
    encoder: docs/results.md); a binary head starts at logit = cos."""

    def __init__(self, clip: tuple[float, float] | None) -> None:
        super().__init__()
        lo, hi = clip or (0.0, 1.0)
        self.clip = clip
        # shape (1,), not (): DeepSpeed broadcasts parameters viewed as bytes, impossible for 0-dim tensors
        self.scale = nn.Parameter(torch.tensor([hi - lo]))
        self.shift = nn.Parameter(torch.tensor([lo]))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        score = self.scale * F.cosine_similarity(u, v, dim=-1) + self.shift  # (B,)
        return score.clamp(*self.clip) if self.clip else score


class SegmentPooler(nn.Module):
    """Long inputs split into segments ("Hierarchical BERT"): one vector per record from its segments'
    vectors, by mean, elementwise max, or learned attention over the segments (a zero-initialised query:
    starts as the mean)."""

    def __init__(self, how: str, width: int) -> None:
        super().__init__()
        self.how = how
        if how == "attention":
            self.key = nn.Linear(width, width, bias=False)
            self.query = nn.Parameter(torch.zeros(width))

    def forward(self, vectors: torch.Tensor, segment_of: torch.Tensor, records: int) -> torch.Tensor:
        """vectors: (S, W) one per segment; segment_of: (S,) the record of each -> (records, W)."""
        owner = segment_of.unsqueeze(-1).expand_as(vectors)
        if self.how == "max":
            init = torch.full(
                (records, vectors.size(-1)), torch.finfo(vectors.dtype).min, dtype=vectors.dtype
            )
            return init.to(vectors.device).scatter_reduce(0, owner, vectors, "amax")
        if self.how == "attention":
            scores = self.key(vectors) @ self.query / vectors.size(-1) ** 0.5  # (S,)
            best = torch.full(
                (records,), torch.finfo(scores.dtype).min, dtype=scores.dtype, device=scores.device
            )
            best = best.scatter_reduce(0, segment_of, scores, "amax")
            weights = (scores - best[segment_of]).exp()  # a softmax within each record
            total = torch.zeros(records, dtype=scores.dtype, device=scores.device).index_add(
                0, segment_of, weights
            )
            vectors = vectors * (weights / total[segment_of]).unsqueeze(-1)
            return torch.zeros(
                records, vectors.size(-1), dtype=vectors.dtype, device=vectors.device
            ).index_add(0, segment_of, vectors)
        sums = torch.zeros(records, vectors.size(-1), dtype=vectors.dtype, device=vectors.device)
        counts = torch.zeros(records, dtype=vectors.dtype, device=vectors.device)
        sums = sums.index_add(0, segment_of, vectors)
        counts = counts.index_add(0, segment_of, torch.ones_like(segment_of, dtype=vectors.dtype))
        return sums / counts.unsqueeze(-1)


def reader(arch: HeadArch, pooling: Pooling, width: int, lstm_size: int, kernels: list[int], channels: int):
    """What turns the encoder's output into one vector per sequence (``.out_width`` wide)."""
    if arch == "lstm":
        from bertmt.model.token_heads import LstmReader

        return LstmReader(width, lstm_size, Pooler(pooling, 2 * lstm_size))
    if arch == "cnn":
        from bertmt.model.token_heads import CnnReader

        return CnnReader(width, kernels, channels)
    return Pooler(pooling, width)


class TaskHead(nn.Module):
    """Reader (pooling, or a BiLSTM / CNN over the tokens) + MLP. A siamese pair head sees
    ``[u, v, |u - v|, u * v]`` (``concat``), the scaled cosine
    (``cosine``: one regression value, or the logit of class 1 of a binary task), or both. A cross-encoded
    pair head with ``segment_features`` sees ``[p, a, b, |a - b|, a * b]``: the pooled pair and each
    sentence's tokens of it pooled alike."""

    def __init__(
        self,
        width: int,
        out_size: int,
        hidden: list[int],
        dropout: float,
        pooling: Pooling,
        pair_features: PairFeatures | None = None,
        output_bias: float = 0.0,
        label_range: tuple[float, float] | None = None,
        arch: HeadArch = "mlp",
        lstm_size: int = 128,
        cnn_kernels: tuple[int, ...] = (2, 3, 4),
        cnn_channels: int = 64,
        segment_pooling: str | None = None,
        segment_features: bool = False,
    ) -> None:
        super().__init__()
        self.pool = reader(arch, pooling, width, lstm_size, list(cnn_kernels), cnn_channels)
        width = self.pool.out_width
        if segment_pooling is not None:  # long inputs arrive as segments (data.long_inputs=chunk)
            self.segments = SegmentPooler(segment_pooling, width)
        self.pair_features, self.out_size = pair_features, out_size
        self.segment_features = segment_features  # cross-encoded pair: forward(p, a, b), its two sentences
        if pair_features in ("cosine", "both"):
            self.cosine = ScaledCosine(label_range if out_size == 1 and pair_features == "cosine" else None)
        if pair_features != "cosine":
            in_size = {None: width, "concat": 4 * width, "both": 4 * width + 1}[pair_features]
            in_size += 4 * width if segment_features else 0
            self.mlp = mlp(in_size, out_size, hidden, dropout, output_bias)

    def forward(
        self, u: torch.Tensor, v: torch.Tensor | None = None, b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u: (B, H) pooled sentence (or pair); v: (B, H) second sentence of a siamese pair -> (B, out).
        With ``segment_features``: u the pooled cross-encoded pair, v and b its two sentences' tokens
        pooled."""
        if self.segment_features:
            return self.mlp(torch.cat([u, v, b, (v - b).abs(), v * b], -1))
        if self.pair_features is None:
            return self.mlp(u)
        if self.pair_features == "cosine":
            score = self.cosine(u, v).unsqueeze(-1)  # (B, 1)
            return score if self.out_size == 1 else torch.cat([torch.zeros_like(score), score], -1)
        features = [u, v, (u - v).abs(), u * v]
        if self.pair_features == "both":
            features.append(self.cosine(u, v).unsqueeze(-1))
        return self.mlp(torch.cat(features, -1))
