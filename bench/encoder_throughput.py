"""Training-step throughput (fwd + bwd + AdamW) of the bertmt encoder vs transformers' BertModel on the same
MiniLM weights and the same real batches; and tokens per epoch with length bucketing vs plain dynamic padding.

    python bench/encoder_throughput.py [--steps 20] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import real_train_sets  # noqa: E402

from bertmt.data.batching import bucketed_batches, collate, padded_tokens  # noqa: E402
from bertmt.model import load_encoder, resolve_pretrained  # noqa: E402


def padding_report(sets, batch_size: int) -> None:
    print(f"\ntokens per epoch, SST + Quora + STS train, batch {batch_size}:")
    print(f"{'task':<8}{'real':>10}{'plain pad':>12}{'bucketed':>12}{'saved':>8}")
    totals = np.zeros(3)
    for task, enc in sets.items():
        real = int(enc.lengths.sum())
        plain = padded_tokens(
            enc.lengths, bucketed_batches(enc.lengths, batch_size, 1, np.random.default_rng(0))
        )
        bucket = padded_tokens(
            enc.lengths, bucketed_batches(enc.lengths, batch_size, 50, np.random.default_rng(0))
        )
        totals += (real, plain, bucket)
        print(f"{task:<8}{real:>10}{plain:>12}{bucket:>12}{1 - bucket / plain:>8.1%}")
    real, plain, bucket = totals
    print(f"{'all':<8}{real:>10.0f}{plain:>12.0f}{bucket:>12.0f}{1 - bucket / plain:>8.1%}")
    print(f"padding waste: plain {plain / real - 1:.1%}, bucketed {bucket / real - 1:.1%}")


def real_batches(sets, batch_size: int, n: int) -> list[dict]:
    """n bucketed training batches drawn in turn from the three tasks (as training sees them)."""
    pools = {
        t: bucketed_batches(e.lengths, batch_size, 50, np.random.default_rng(1)) for t, e in sets.items()
    }
    tasks = list(sets)
    return [collate(sets[tasks[i % 3]], pools[tasks[i % 3]][i // 3]) for i in range(n)]


def make_step(model, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch):
        hidden = forward(model, batch)
        hidden.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours(model, b):
    return model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).last_hidden_state


def theirs(model, b):
    return model(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]
    ).last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from transformers import BertModel

    torch.manual_seed(0)
    sets = real_train_sets()
    padding_report(sets, args.batch_size)
    batches = real_batches(sets, args.batch_size, args.steps)
    path = str(resolve_pretrained("minilm"))
    contenders = {
        "bertmt sdpa": (load_encoder("minilm", attention="sdpa").train(), ours),
        "bertmt eager": (load_encoder("minilm", attention="eager").train(), ours),
        "transformers sdpa": (BertModel.from_pretrained(path, attn_implementation="sdpa").train(), theirs),
        "transformers eager": (BertModel.from_pretrained(path, attn_implementation="eager").train(), theirs),
    }
    steps = {name: make_step(m, f) for name, (m, f) in contenders.items()}
    for step in steps.values():  # warm-up
        for b in batches[:2]:
            step(b)
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved rounds, best round counts: robust to machine noise
        for name, step in steps.items():
            t0 = time.perf_counter()
            for b in batches:
                step(b)
            seconds[name].append(time.perf_counter() - t0)
    n_seq = sum(len(b["input_ids"]) for b in batches)
    print(
        f"\ntraining step fwd+bwd+AdamW, MiniLM-L6, {args.steps} real batches of {args.batch_size}, "
        f"{torch.get_num_threads()} threads, best of {args.rounds} rounds:"
    )
    rate = {name: n_seq / min(s) for name, s in seconds.items()}
    for name, r in rate.items():
        print(f"  {name:<20} {r:8.1f} seq/s")
    best_ours = max(v for k, v in rate.items() if k.startswith("bertmt"))
    best_theirs = max(v for k, v in rate.items() if k.startswith("transformers"))
    print(f"  ratio bertmt / transformers (fastest of each): {best_ours / best_theirs:.3f}x")


if __name__ == "__main__":
    main()
