"""BERT encoder with Hugging Face parameter names, so that HF checkpoints load by name.

Architecture only: no losses, optimisers or distributed code here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionImpl = Literal["sdpa", "eager"]
# a task-specific addition to each layer (e.g. PALs): (layer index, layer input, mask) -> (B, L, H)
LayerExtra = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BertConfig:
    """The subset of a Hugging Face ``config.json`` that defines a BERT encoder."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    attention: AttentionImpl = "sdpa"  # not in HF configs: which attention kernel to run

    @classmethod
    def from_dict(cls, raw: dict) -> BertConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, L, H)
    pooler_output: torch.Tensor  # (B, H): tanh(dense(h_cls))


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float, impl: AttentionImpl
) -> torch.Tensor:
    """Scaled dot-product attention. q, k, v: (B, nh, L, hd); mask: (B, 1, 1, L) bool, True = attend."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, nh, L, L)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout)
    return probs @ v  # (B, nh, L, hd)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``extra``: (B, L, H) added before the LayerNorm, like the token types (tag embeddings)."""
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_type_ids)
        if extra is not None:
            x = x + extra
        return self.dropout(self.LayerNorm(x))  # (B, L, H)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob
        self.impl = cfg.attention

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        return x.view(b, n, self.num_heads, h // self.num_heads).transpose(1, 2)  # (B, nh, L, hd)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # one fused (H -> 3H) projection instead of three: fewer, larger matmuls (bench/encoder_throughput.py)
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3H, H)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3H,)
        q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)  # 3 x (B, L, H)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        dropout = self.dropout_p if self.training else 0.0
        ctx = attention(q, k, v, mask, dropout, self.impl)  # (B, nh, L, hd)
        return ctx.transpose(1, 2).flatten(2)  # (B, L, H)


class BertSelfOutput(nn.Module):
    """Projection after attention, then the residual and LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(ctx)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, mask), h)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, inner: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(inner)) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attention(h, mask)
        return self.output(self.intermediate(a), a if extra is None else a + extra)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, extra: LayerExtra | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            h = layer(h, mask, None if extra is None else extra(i, h, mask))
        return h


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """BERT encoder: ``forward(input_ids, attention_mask, token_type_ids=None) -> EncoderOutput``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        extra: LayerExtra | None = None,
        extra_embeddings: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """``extra``: a task-specific addition to every layer, before its last LayerNorm (PALs);
        ``extra_embeddings``: (B, L, H) added to the input embeddings (tag embeddings)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        h = self.encoder(self.embeddings(input_ids, token_type_ids, extra_embeddings), mask, extra)
        return EncoderOutput(last_hidden_state=h, pooler_output=self.pooler(h))
