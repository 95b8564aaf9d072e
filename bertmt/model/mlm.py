"""Masked-language modelling for task-adaptive pre-training (a phase with ``train.objective: mlm``).

The head is BERT's: ``transform`` (dense, activation, LayerNorm) then a decoder tied to the word embeddings
plus a bias, with Hugging Face's parameter names under ``cls.predictions`` so that a checkpoint's own head
(BertForMaskedLM / BertForPreTraining) loads by name; a checkpoint without one (a sentence-embedding model)
starts the transform fresh. Masking is BERT's: ``probability`` of the ordinary tokens are chosen; of those
80% become [MASK], 10% a random token and 10% stay. Each row draws its mask from a generator of its own
seed, so a batch's masks do not depend on how its rows are split over ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertmt.model.bert import ACTIVATIONS, BertConfig

IGNORE = -100  # the label of a position that is not predicted


class MlmHead(nn.Module):
    """``forward(h)``: (M, H) hidden states of the masked positions -> (M, vocab) logits."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.word_embeddings = [word_embeddings]  # tied, not a submodule: its weight is the encoder's
        nn.init.normal_(self.dense.weight, std=0.02), nn.init.zeros_(self.dense.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.LayerNorm(self.act(self.dense(h)))
        return F.linear(h, self.word_embeddings[0].weight, self.bias)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> bool:
        """Take ``cls.predictions.*`` from a Hugging Face state dict; False when it has no MLM head."""
        names = {
            "dense.weight": "cls.predictions.transform.dense.weight",
            "dense.bias": "cls.predictions.transform.dense.bias",
            "LayerNorm.weight": "cls.predictions.transform.LayerNorm.weight",
            "LayerNorm.bias": "cls.predictions.transform.LayerNorm.bias",
            "bias": "cls.predictions.bias",
        }
        if not all(hf in state for hf in names.values()):
            return False
        self.load_state_dict({ours: state[hf] for ours, hf in names.items()})
        return True


def mask_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    seeds: list[int],
    special_ids: list[int],
    mask_id: int,
    vocab_size: int,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of each row with its own seed -> (masked input_ids, labels: the original token where
    predicted, IGNORE elsewhere). Padding and special tokens are never chosen. A row's draws are made over
    its real tokens alone, so its masks do not depend on how wide the batch it landed in is padded (ranks
    holding parts of a global batch pad less than one process holding all of it)."""
    masked, labels = input_ids.clone(), torch.full_like(input_ids, IGNORE)
    special = torch.tensor(special_ids)
    for r, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        real = attention_mask[r].bool().nonzero().squeeze(1)  # positions of the row's tokens
        n = real.numel()
        draw = torch.rand(n, generator=g)
        how = torch.rand(n, generator=g)
        random_tokens = torch.randint(vocab_size, (n,), generator=g)
        tokens = input_ids[r, real]
        chosen = ~torch.isin(tokens, special) & (draw < probability)
        labels[r, real[chosen]] = tokens[chosen]
        masked[r, real[chosen & (how < 0.8)]] = mask_id
        swap = chosen & (how >= 0.8) & (how < 0.9)
        masked[r, real[swap]] = random_tokens[swap]
    return masked, labels
