"""The multitask model: one shared encoder, per task a head (and optionally PALs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bertmt.model.bert import BertModel, EncoderOutput
from bertmt.model.experts import Experts
from bertmt.model.heads import HeadArch, PairFeatures, Pooling, TaskHead
from bertmt.model.mlm import IGNORE, MlmHead
from bertmt.model.pals import ProjectedAttention

MLM = "mlm"  # the pseudo-task of masked-language modelling (train.objective=mlm)


@dataclass
class HeadSpec:
    """What one head predicts and from which inputs."""

    out_size: int  # classes, or 1 for regression
    pair_features: PairFeatures | None = None  # siamese pair task: how u and v are combined
    output_bias: float = 0.0  # initial output bias (regression: middle of the label range)
    label_range: tuple[float, float] | None = None  # regression targets' range (cosine heads clip to it)
    arch: HeadArch = "mlp"  # mlp over the pooled vector, or a BiLSTM / CNN over the tokens first
    lstm_size: int = 128  # lstm: units per direction
    cnn_kernels: tuple[int, ...] = (2, 3, 4)  # cnn: window widths
    cnn_channels: int = 64  # cnn: filters per width
    segment_pooling: str | None = None  # long inputs split into segments: how their vectors are pooled
    segment_features: bool = False  # cross-encoded pair: [p, a, b, |a-b|, a*b], a and b its two sentences


@dataclass
class ExpertSpec:
    count: int = 2  # experts (copies of the top layers)
    layers: int = 2  # top encoder layers each expert has


@dataclass
class PalSpec:
    size: int = 204
    heads: int = 12
    shared: bool = True


class MultitaskModel(nn.Module):
    """``forward(task, input_ids, attention_mask, token_type_ids, input_ids_b=None, attention_mask_b=None)``
    -> (B, out_size) raw head outputs.

    Cross-encoded pairs arrive joined as one sequence; siamese pairs as two (``*_b`` is the second sentence).
    ``head_of`` maps datasets to heads (several datasets may share one); PALs, when given, are per head, and
    so are the experts' gates.
    """

    def __init__(
        self,
        encoder: BertModel,
        heads: dict[str, HeadSpec],
        pooling: Pooling,
        hidden: list[int],
        dropout: float,
        head_of: dict[str, str] | None = None,
        pals: PalSpec | None = None,
        experts: ExpertSpec | None = None,
        mlm: bool = False,
        tag_sizes: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        cfg = encoder.config
        self.head_of = head_of or {name: name for name in heads}
        self.heads = nn.ModuleDict(
            {
                name: TaskHead(
                    cfg.hidden_size,
                    h.out_size,
                    hidden,
                    dropout,
                    pooling,
                    h.pair_features,
                    h.output_bias,
                    h.label_range,
                    h.arch,
                    h.lstm_size,
                    h.cnn_kernels,
                    h.cnn_channels,
                    h.segment_pooling,
                    h.segment_features,
                )
                for name, h in heads.items()
            }
        )
        self.pals = None
        if pals is not None:
            self.pals = nn.ModuleDict(
                {
                    name: ProjectedAttention(
                        cfg.hidden_size,
                        cfg.num_hidden_layers,
                        pals.size,
                        pals.heads,
                        pals.shared,
                        cfg.attention,
                    )
                    for name in heads
                }
            )

        self.experts = None
        if experts is not None:
            self.experts = Experts(encoder, experts.count, experts.layers, list(heads))
        self.mlm = MlmHead(cfg, encoder.embeddings.word_embeddings) if mlm else None
        self.tags = None  # POS / NER tag embeddings, zero at first: the pretrained output is unchanged
        if tag_sizes:
            self.tags = nn.ModuleDict({k: nn.Embedding(n, cfg.hidden_size) for k, n in tag_sizes.items()})
            for table in self.tags.values():
                nn.init.zeros_(table.weight)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task uses (the encoder, its experts' layers, the tag embeddings): the ones surgery
        projects."""
        experts = list(self.experts.copies.parameters()) if self.experts is not None else []
        tags = list(self.tags.parameters()) if self.tags is not None else []
        return list(self.encoder.parameters()) + experts + tags

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` (and datasets sharing its head) uses: head, PALs and expert gate. Never
        projected."""
        name = self.head_of[task]
        own = list(self.heads[name].parameters())
        own += list(self.pals[name].parameters()) if self.pals is not None else []
        return own + (list(self.experts.gates[name].parameters()) if self.experts is not None else [])

    def _tag_embeddings(self, tag_ids: torch.Tensor | None) -> torch.Tensor | None:
        """(B, L, K) tag indices -> (B, L, H) the sum of their embeddings."""
        if self.tags is None or tag_ids is None:
            return None
        return sum(table(tag_ids[..., k]) for k, table in enumerate(self.tags.values()))

    def _encode(self, name: str, ids, mask, types, tag_ids=None) -> EncoderOutput:
        extra = self.pals[name] if self.pals is not None else None
        tags = self._tag_embeddings(tag_ids)
        if self.experts is not None:
            return self.experts(self.encoder, name, ids, mask, types, extra, tags)
        return self.encoder(ids, mask, types, extra, tags)

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        input_ids_b: torch.Tensor | None = None,
        attention_mask_b: torch.Tensor | None = None,
        segment_of: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        tag_ids: torch.Tensor | None = None,
        tag_ids_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``segment_of`` (S,): the rows are segments of long records (all S encoded as one batch), this is
        the record of each (records 0..B-1, in order); the head reads the pooled segments. Task ``mlm``
        (with ``mlm_labels``, IGNORE where nothing is predicted): the MLM logits (M, vocab) of the M
        predicted positions, in row-major order. ``tag_ids`` (B, L, K) (and ``tag_ids_b`` of the second
        sentences): POS / NER tags of every piece (data.tags)."""
        if task == MLM:
            h = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state
            return self.mlm(h[mlm_labels != IGNORE])
        name = self.head_of[task]
        head = self.heads[name]
        if input_ids_b is None:
            out = self._encode(name, input_ids, attention_mask, token_type_ids, tag_ids)
            pooled = head.pool(out, attention_mask)
            if segment_of is not None:
                pooled = head.segments(pooled, segment_of, int(segment_of.max()) + 1)
            if head.segment_features:  # each sentence's tokens of the cross-encoded pair, pooled alike
                first = attention_mask * (token_type_ids == 0)
                a, b = head.pool(out, first), head.pool(out, attention_mask - first)
                return head(pooled, a, b)
            return head(pooled)
        # siamese: both sentences through the encoder in one batch of 2B rows padded to a common width
        width = max(input_ids.size(1), input_ids_b.size(1))
        ids = torch.cat([_pad(input_ids, width), _pad(input_ids_b, width)])
        mask = torch.cat([_pad(attention_mask, width), _pad(attention_mask_b, width)])
        tags = (
            None if tag_ids is None else torch.cat([_pad_tags(tag_ids, width), _pad_tags(tag_ids_b, width)])
        )
        pooled = head.pool(self._encode(name, ids, mask, None, tags), mask)  # (2B, H)
        u, v = pooled.chunk(2)
        return head(u, v)


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, width - x.size(1)))


def _pad_tags(x: torch.Tensor, width: int) -> torch.Tensor:
    return nn.functional.pad(x, (0, 0, 0, width - x.size(1)))  # (B, L, K): pad L
