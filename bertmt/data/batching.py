"""Tokenisation (once per dataset, cached on disk), length bucketing and dynamic padding; long inputs split
into overlapping segments (``data.long_inputs=chunk``) at collation."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from bertmt.data.readers import TaskData
from bertmt.files import atomic_path

log = logging.getLogger(__name__)
CACHE_VERSION = 3


@dataclass(frozen=True)
class Chunking:
    """``data.long_inputs=chunk``: a row longer than ``max_length`` becomes segments ``[CLS] w [SEP]`` of
    windows ``w`` of ``max_length - 2`` word pieces that overlap by ``overlap`` pieces, at most
    ``max_segments`` of them (the pieces beyond are dropped, and counted in the log when the data is
    tokenised)."""

    max_length: int
    overlap: int
    max_segments: int

    def windows(self, pieces: int) -> list[tuple[int, int]]:
        """[start, end) of each segment's word pieces, for a row of ``pieces`` word pieces (without its
        [CLS] and [SEP])."""
        width = self.max_length - 2
        step = width - self.overlap
        out = [(0, min(width, pieces))]
        while out[-1][1] < pieces and len(out) < self.max_segments:
            start = out[-1][0] + step
            out.append((start, min(start + width, pieces)))
        return out

    def split(self, row: np.ndarray) -> list[np.ndarray]:
        """The segments of one tokenised row ``[CLS] pieces [SEP]``: the row itself when it fits."""
        if len(row) <= self.max_length:
            return [row]
        cls, body, sep = row[:1], row[1:-1], row[-1:]
        return [np.concatenate([cls, body[a:b], sep]) for a, b in self.windows(len(body))]


@dataclass
class Encoded:
    """A tokenised dataset: variable-length rows kept flat with offsets (cheap to cache and slice)."""

    ids: list[str]
    input_ids: np.ndarray  # (total_tokens,) int32, all rows concatenated
    token_types: np.ndarray  # (total_tokens,) int8
    offsets: np.ndarray  # (N + 1,) int64, row i is [offsets[i], offsets[i+1])
    labels: np.ndarray | None  # (N,) float32 or None
    second: Encoded | None = None  # siamese pairs: the second sentences (this one holds the first)
    chunking: Chunking | None = None  # long rows kept whole, split into segments by collate()
    tags: np.ndarray | None = None  # (total_tokens, K) int16: POS / NER tag of every piece (data.tags)
    symmetric: bool = False  # cross-encoded pairs scored in both orders (tasks.<t>.symmetric); not cached
    swap: bool = False  # and read in a random order by each training pass (symmetric: true); not cached

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (siamese pairs: both sentences), the cost that length bucketing evens out."""
        own = np.diff(self.offsets)
        return own if self.second is None else own + self.second.lengths


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """Several tokenised files of one dataset as one, rows in order (one part: itself). The caller sets
    ``symmetric`` and ``swap``; chunking is the first part's (a loader gives every part the same)."""
    if len(parts) == 1:
        return parts[0]
    tags = [p.tags for p in parts]
    labels = [p.labels for p in parts]
    sizes = np.cumsum([0] + [len(p.input_ids) for p in parts[:-1]])
    return Encoded(
        ids=[rid for p in parts for rid in p.ids],
        input_ids=np.concatenate([p.input_ids for p in parts]),
        token_types=np.concatenate([p.token_types for p in parts]),
        offsets=np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, sizes)]),
        labels=None if any(y is None for y in labels) else np.concatenate(labels),
        second=None if parts[0].second is None else concat_encoded([p.second for p in parts]),
        chunking=parts[0].chunking,
        tags=None if any(t is None for t in tags) else np.concatenate(tags),
    )


def _cache_key(data: TaskData, tokenizer: Tokenizer, max_length: int, siamese: bool, chunking, tagger) -> str:
    stat = os.stat(data.path)
    h = hashlib.sha256()
    for part in (
        CACHE_VERSION,
        os.path.abspath(data.path),
        stat.st_size,
        stat.st_mtime_ns,
        max_length,
        siamese,
        chunking,
        tagger.identity() if tagger is not None else None,
        len(data),
        tokenizer.to_str(),
    ):
        h.update(str(part).encode())
    return h.hexdigest()[:24]


def _tokenise(
    tokenizer: Tokenizer, inputs: list, ids: list[str], labels: np.ndarray | None, tagger=None
) -> Encoded:
    encodings = tokenizer.encode_batch(inputs)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tags = None
    if tagger is not None:
        from bertmt.data.tags import align

        sentences = [list(x) if isinstance(x, (tuple, list)) else [x] for x in inputs]
        flat = tagger.char_tags([s for group in sentences for s in group])
        starts = np.cumsum([0] + [len(g) for g in sentences])
        k = len(tagger.kinds)
        tags = np.concatenate(
            [align(e, flat[starts[i] : starts[i + 1]], k) for i, e in enumerate(encodings)]
            or [np.zeros((0, k), dtype=np.int16)]
        )
    return Encoded(
        ids=ids,
        input_ids=np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=offsets[-1]),
        token_types=np.fromiter((i for e in encodings for i in e.type_ids), dtype=np.int8, count=offsets[-1]),
        offsets=offsets,
        labels=labels,
        tags=tags,
    )


def encode(
    data: TaskData,
    tokenizer: Tokenizer,
    max_length: int,
    cache_dir: str | Path | None,
    siamese: bool = False,
    chunking: Chunking | None = None,
    tagger=None,
) -> Encoded:
    """Tokenise every record of ``data`` (pairs as one sequence, or each sentence alone when ``siamese``),
    reusing an on-disk cache when present. With ``chunking`` (single sentences) rows are kept whole."""
    if chunking is None:
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")  # part of the key
    else:
        tokenizer.no_truncation()
    key = _cache_key(data, tokenizer, max_length, siamese, chunking, tagger)
    path = Path(cache_dir) / f"{data.task}-{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, weights_only=False)
            second = cached.pop("second")
            cached["chunking"] = chunking
            return Encoded(**cached, second=None if second is None else Encoded(**second))
        except Exception as exc:  # truncated or foreign file: torch and pickle raise many kinds
            log.warning("tokenisation cache %s is unreadable (%r): tokenising again", path, exc)
    labels = None if data.labels is None else np.asarray(data.labels, dtype=np.float32)
    ids = list(data.ids)
    if siamese:
        enc = _tokenise(tokenizer, [t[0] for t in data.texts], ids, labels, tagger)
        enc.second = _tokenise(tokenizer, [t[1] for t in data.texts], ids, None, tagger)
    else:
        enc = _tokenise(tokenizer, [t if len(t) == 2 else t[0] for t in data.texts], ids, labels, tagger)
    enc.chunking = chunking
    if chunking is not None:
        _log_chunking(data.task, enc, chunking)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        uncached = ("chunking", "symmetric", "swap")  # set by the caller, not by the file
        state = {k: v for k, v in enc.__dict__.items() if k not in uncached}
        if enc.second is not None:
            state["second"] = {k: v for k, v in enc.second.__dict__.items() if k not in uncached}
        with atomic_path(path) as tmp:  # concurrent ranks never read a half-written cache
            torch.save(state, tmp)
    lengths = enc.lengths
    log.info(
        "%s: tokenised %d records from %s (mean %.1f tokens, max %d)",
        data.task,
        len(enc),
        data.path,
        lengths.mean(),
        lengths.max(),
    )
    return enc


def _log_chunking(task: str, enc: Encoded, chunking: Chunking) -> None:
    pieces = np.diff(enc.offsets) - 2
    long = pieces > chunking.max_length - 2
    if not long.any():
        return
    covered = np.array([chunking.windows(int(n))[-1][1] for n in pieces[long]])
    cut = int((covered < pieces[long]).sum())
    log.info(
        "%s: %d of %d records longer than %d tokens, split into segments (overlap %d)%s",
        task,
        int(long.sum()),
        len(enc),
        chunking.max_length,
        chunking.overlap,
        f"; {cut} of them exceed data.max_segments={chunking.max_segments} and lose their end" if cut else "",
    )


def _pad(sequences: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    """(ids, types) rows -> input_ids, token_type_ids, attention_mask of (len, longest), 0-padded."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)  # (B, L), 0 = [PAD]
    token_types = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for j, (ids, types) in enumerate(sequences):
        input_ids[j, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        token_types[j, : len(ids)] = torch.from_numpy(types.astype(np.int64))
        mask[j, : len(ids)] = 1
    return input_ids, token_types, mask


def swap_order(types: np.ndarray) -> np.ndarray | None:
    """The token order that turns a cross-encoded pair ``[CLS] a [SEP] b [SEP]`` (token types 0 up to the
    first [SEP], then 1) into ``[CLS] b [SEP] a [SEP]``: index it with the row's ids (and tags); the swapped
    row's token types are ``swapped_types``. None for a row without a second sentence."""
    n, first = len(types), int((types == 0).sum())  # first: [CLS] a [SEP]
    if first >= n:
        return None
    return np.concatenate([[0], np.arange(first, n - 1), [first - 1], np.arange(1, first - 1), [n - 1]])


def swapped_types(types: np.ndarray) -> np.ndarray:
    """Token types of the row ``types`` after :func:`swap_order`: ``[CLS] b [SEP]`` 0, ``a [SEP]`` 1."""
    second = int((types != 0).sum())
    return np.concatenate([np.zeros(second + 1, types.dtype), np.ones(len(types) - second - 1, types.dtype)])


def collate(enc: Encoded, rows: np.ndarray, swap: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Pad the given rows to their longest member (dynamic padding). Siamese pairs add ``input_ids_b`` and
    ``attention_mask_b`` (the second sentences). With ``enc.chunking``, every row becomes its segments (one
    row per segment) and ``segment_of`` (S,) names the batch row each segment belongs to. ``swap`` (one bool
    per row, cross-encoded pairs): those rows are read as ``[CLS] b [SEP] a [SEP]``."""
    sequences, owner, tags = [], [], []
    for j, row in enumerate(rows):
        a, b = enc.offsets[row], enc.offsets[row + 1]
        ids, types = enc.input_ids[a:b], enc.token_types[a:b]
        row_tags = None if enc.tags is None else enc.tags[a:b]
        if swap is not None and swap[j] and (order := swap_order(types)) is not None:
            ids, types = ids[order], swapped_types(types)
            row_tags = None if row_tags is None else row_tags[order]
        if row_tags is not None:
            tags.append(row_tags)
        if enc.chunking is None:
            sequences.append((ids, types))
            continue
        for segment in enc.chunking.split(ids):
            sequences.append((segment, np.zeros_like(segment)))  # single sentences: token type 0
            owner.append(j)
    input_ids, token_types, mask = _pad(sequences)
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "token_type_ids": token_types,
        "rows": torch.from_numpy(np.asarray(rows, dtype=np.int64)),
    }
    if enc.chunking is not None:
        batch["segment_of"] = torch.tensor(owner, dtype=torch.long)
    if enc.tags is not None:  # (B, L, K), 0 (no tag) in the padding
        batch["tag_ids"] = torch.zeros(*input_ids.shape, enc.tags.shape[1], dtype=torch.long)
        for j, row_tags in enumerate(tags):
            batch["tag_ids"][j, : len(row_tags)] = torch.from_numpy(row_tags.astype(np.int64))
    if enc.labels is not None:
        batch["labels"] = torch.from_numpy(enc.labels[rows])
    if enc.second is not None:
        second = collate(enc.second, rows)
        batch["input_ids_b"], batch["attention_mask_b"] = second["input_ids"], second["attention_mask"]
        if "tag_ids" in second:
            batch["tag_ids_b"] = second["tag_ids"]
    return batch


MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "input_ids_b",
    "attention_mask_b",
    "segment_of",
    "tag_ids",
    "tag_ids_b",
)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch that the model takes, on ``device``."""
    return {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, pool: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle, sort by length inside pools of ``pool * batch_size`` rows, cut batches, shuffle the batches.

    ``pool=1`` is plain dynamic padding of random batches (sorting inside one batch pads nothing less).
    """
    order = rng.permutation(len(lengths))
    batches = []
    step = pool * batch_size
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic evaluation batches of similar lengths (sorted), covering every row once."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens actually processed (batch size x longest row) by a list of batches."""
    return int(sum(len(b) * lengths[b].max() for b in batches))


class TaskSampler:
    """Training batches of one task: bucketed passes over the data, sliced for this rank.

    Batch number ``k`` of the whole run is fully determined by (seed, k): pass ``k // n`` is shuffled with its
    own generator. The sampler's only state is how many batches were drawn, so resume is exact. A pair
    task trained in both orders (``enc.swap``) also draws, with a generator of its own, the order each pair
    is read in during that pass (half of them swapped on average), the same on every rank.
    """

    def __init__(self, enc: Encoded, batch_size: int, pool: int, seed: int, rank: int = 0, world: int = 1):
        self.enc, self.seed, self.rank, self.world = enc, seed, rank, world
        self.batch_size, self.pool = batch_size, pool
        self.drawn = 0
        self._pass, self._batches, self._swap = -1, [], None
        self._len = len(self._pass_batches(0))

    def __len__(self) -> int:
        """Batches in one pass over the data (every pass has the same batch sizes)."""
        return self._len

    def _pass_batches(self, index: int) -> list[np.ndarray]:
        if index != self._pass:
            rng = np.random.default_rng([self.seed, index])
            self._batches = bucketed_batches(self.enc.lengths, self.batch_size * self.world, self.pool, rng)
            if self.enc.swap:  # a generator of its own: the batches are those of an ordered task
                self._swap = np.random.default_rng([self.seed, index, 1]).random(len(self.enc)) < 0.5
            self._pass = index
        return self._batches

    def next(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the next global batch, and ``share`` = n_r * W / N (rows here, world size,
        rows in the global batch): the factor that makes the rank's mean loss its part of the global-batch
        mean once the ranks are averaged, so every row weighs 1/N however the batch splits. A rank left
        without rows (a last batch smaller than the world) computes on one row of the batch with share 0:
        it still runs every collective, and contributes nothing."""
        batch = self._pass_batches(self.drawn // len(self))[self.drawn % len(self)]
        rows = np.array_split(batch, self.world)[self.rank]
        self.drawn += 1
        rows_here = rows if len(rows) else batch[:1]
        out = collate(self.enc, rows_here, None if self._swap is None else self._swap[rows_here])
        out["share"] = torch.tensor(len(rows) * self.world / len(batch), dtype=torch.float64)
        return out
