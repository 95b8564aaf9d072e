"""Combined experts (Multi-gate Mixture-of-Experts, Ma et al. 2018; the "4 BERT models combined with a
gating network" report): the top ``layers`` encoder layers exist ``count`` times, and per task a softmax gate
mixes the experts' outputs token by token; the layers below stay shared.

Expert 0 is the encoder's own top layers; experts 1.. are copies of them, so every expert starts from the
pretrained weights, and a fresh model computes exactly what the plain encoder computed (any mixture of
identical outputs is that output). The gates start small and random (std 0.02), not at zero: zero gates with
identical experts are a saddle (each expert gets the same gradient, and no gate gets any). The gate of a
task reads the token states entering the experts:
``g(h_t) = softmax(W_task h_t + b_task)``, one weight per expert and token.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bertmt.model.bert import BertModel, EncoderOutput, LayerExtra


class Experts(nn.Module):
    """``forward(encoder, gate, ids, mask, types, extra)``: the encoder's output with its top layers
    replaced by the ``gate``'s mixture of the experts."""

    def __init__(self, encoder: BertModel, count: int, layers: int, gates: list[str]) -> None:
        super().__init__()
        total = encoder.config.num_hidden_layers
        if not 1 <= layers <= total or count < 2:
            raise ValueError(
                f"model.experts: expected count >= 2 (got {count}) and layers in [1, {total}] (the encoder's "
                f"layers; got {layers})"
            )
        self.first = total - layers  # index of the first expert layer
        top = encoder.encoder.layer[self.first :]
        self.copies = nn.ModuleList(
            nn.ModuleList(copy.deepcopy(layer) for layer in top) for _ in range(count - 1)
        )
        width = encoder.config.hidden_size
        self.gates = nn.ModuleDict({name: nn.Linear(width, count) for name in gates})
        for gate in self.gates.values():
            nn.init.normal_(gate.weight, std=0.02), nn.init.zeros_(gate.bias)

    def expert_layers(self, encoder: BertModel) -> list[nn.ModuleList]:
        """Each expert's layers, expert 0 (the encoder's own top layers) first."""
        return [encoder.encoder.layer[self.first :], *self.copies]

    def forward(
        self,
        encoder: BertModel,
        gate: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        extra: LayerExtra | None = None,
        extra_embeddings: torch.Tensor | None = None,
    ) -> EncoderOutput:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        h = encoder.embeddings(input_ids, token_type_ids, extra_embeddings)
        for i, layer in enumerate(encoder.encoder.layer[: self.first]):
            h = layer(h, mask, None if extra is None else extra(i, h, mask))
        outputs = []
        for layers in self.expert_layers(encoder):
            x = h
            for i, layer in enumerate(layers, self.first):
                x = layer(x, mask, None if extra is None else extra(i, x, mask))
            outputs.append(x)
        weights = self.gates[gate](h).softmax(-1)  # (B, L, E)
        mixed = torch.einsum("ble,eblh->blh", weights, torch.stack(outputs))  # (B, L, H)
        return EncoderOutput(last_hidden_state=mixed, pooler_output=encoder.pooler(mixed))
