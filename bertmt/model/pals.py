"""Projected attention layers (Stickland & Murray 2019, "BERT and PALs").

Per task, in every encoder layer, a low-rank multi-head attention runs in parallel with the layer:
``PAL(h) = V_D g(V_E h)``, with ``V_E: hidden -> size``, ``g`` multi-head self-attention inside the
``size``-wide space, and ``V_D: size -> hidden``. Its output is added before the layer's last LayerNorm
(as in the authors' code): ``LN(FFN(a) + a + PAL(h))``, ``a`` the self-attention sub-layer's output for
the layer input h.
``V_D`` starts at zero, so a model with fresh PALs computes exactly what the encoder computed without them.
"""

from __future__ import annotations

import torch
from torch import nn

from bertmt.model.bert import AttentionImpl, attention


class LowRankSelfAttention(nn.Module):
    """``g``: multi-head self-attention inside the low-rank space (no output projection: V_D follows)."""

    def __init__(self, size: int, heads: int, impl: AttentionImpl) -> None:
        super().__init__()
        self.heads, self.impl = heads, impl
        self.qkv = nn.Linear(size, 3 * size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, s = x.shape
        q, k, v = (
            t.view(b, n, self.heads, s // self.heads).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1)
        )  # 3 x (B, heads, L, s / heads)
        return attention(q, k, v, mask, 0.0, self.impl).transpose(1, 2).flatten(2)  # (B, L, s)


class ProjectedAttention(nn.Module):
    """One task's PALs for all layers; ``forward(layer, h, mask)`` is the addition to layer ``layer``."""

    def __init__(self, hidden: int, layers: int, size: int, heads: int, shared: bool, impl: AttentionImpl):
        super().__init__()
        projections = 1 if shared else layers
        self.shared = shared
        self.encode = nn.ModuleList(nn.Linear(hidden, size, bias=False) for _ in range(projections))  # V_E
        self.decode = nn.ModuleList(nn.Linear(size, hidden, bias=False) for _ in range(projections))  # V_D
        self.attend = nn.ModuleList(LowRankSelfAttention(size, heads, impl) for _ in range(layers))  # g
        for layer in self.encode:
            nn.init.normal_(layer.weight, std=0.02)
        for layer in self.decode:
            nn.init.zeros_(layer.weight)  # the encoder's output is unchanged until V_D learns

    def forward(self, layer: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        i = 0 if self.shared else layer
        return self.decode[i](self.attend[layer](self.encode[i](h), mask))  # (B, L, hidden)
