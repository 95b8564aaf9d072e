"""Task heads that read the token states rather than one pooled vector ("BERT's Buddies", "CNN BERT"):
a BiLSTM over the tokens, then pooled, or 1-D convolutions of several widths, max-pooled over time. Each
returns one vector per sequence, which the task's MLP (or pair features) then reads like a pooled vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertmt.model.bert import EncoderOutput


class LstmReader(nn.Module):
    """BiLSTM (``size`` units per direction) over the real tokens of each sequence (packed: padding never
    enters the recurrence), then ``pool`` (a :class:`bertmt.model.heads.Pooler` of width 2 * size) over its
    outputs. Output width: 2 * size."""

    def __init__(self, width: int, size: int, pool: nn.Module) -> None:
        super().__init__()
        self.lstm = nn.LSTM(width, size, batch_first=True, bidirectional=True)
        self.pool = pool
        self.out_width = 2 * size

    def forward(self, out: EncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        h = out.last_hidden_state  # (B, L, H)
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=h.size(1))
        return self.pool(EncoderOutput(states, None), attention_mask)  # (B, 2 * size)


class CnnReader(nn.Module):
    """For each kernel width k: ``channels`` filters over windows of k consecutive real tokens, ReLU, max
    over the windows; the widths' maxima concatenated (output width: channels * len(kernels)). A sequence
    shorter than k is zero-padded to one window. Windows never reach into padding, so the result does not
    depend on how much padding the batch has."""

    def __init__(self, width: int, kernels: list[int], channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(width, channels, k) for k in kernels)
        self.out_width = channels * len(kernels)

    def forward(self, out: EncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()  # (B, L)
        h = out.last_hidden_state * mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # zero the padding
        lengths = mask.sum(1)  # (B,)
        pooled = []
        for conv in self.convs:
            k = conv.kernel_size[0]
            x = F.pad(h, (0, 0, 0, max(0, k - h.size(1)))).transpose(1, 2)  # (B, H, L'), L' >= k
            y = F.relu(conv(x))  # (B, C, L' - k + 1): window t covers tokens t .. t + k - 1
            starts = torch.arange(y.size(-1), device=y.device)
            valid = starts[None, :] <= (lengths[:, None] - k).clamp(min=0)  # windows inside the real tokens
            pooled.append(y.masked_fill(~valid[:, None, :], float("-inf")).amax(-1))  # (B, C)
        return torch.cat(pooled, -1)
