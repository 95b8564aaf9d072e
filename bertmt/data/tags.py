"""POS and NER tags from a spaCy pipeline ("BERT's Buddies"), aligned to word pieces.

Each sentence goes through the pipeline once per dataset (the tags are cached with the tokenisation); each
word piece takes the tag of the spaCy token that contains its first character, and special tokens and
padding take 0 ("no tag"). Tag vocabularies come from the pipeline's labels: ``pos`` is the tagger's
fine-grained tag (``token.tag_``), ``ner`` is ``O`` or ``B-``/``I-`` + the entity label. The model adds a
learned embedding per tag (zero-initialised) to the word embeddings (bertmt/model/multitask.py).

spaCy is an optional dependency: ``pip install bertmt[tags]``, and a pipeline (a package name such as
``en_core_web_sm`` or a directory written by ``nlp.to_disk``) in ``data.tags.pipeline``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

KINDS = ("pos", "ner")


@functools.lru_cache(maxsize=4)
def load_pipeline(name: str):
    try:
        import spacy
    except ImportError as exc:
        raise ImportError("data.tags needs spaCy: pip install 'bertmt[tags]'") from exc
    try:
        return spacy.load(name)
    except OSError as exc:
        raise OSError(f"data.tags.pipeline: cannot load the spaCy pipeline {name!r}: {exc}") from exc


@dataclass(frozen=True)
class Tagger:
    """The tags of ``kinds`` from spaCy pipeline ``pipeline``."""

    pipeline: str
    kinds: tuple[str, ...]

    @property
    def nlp(self):
        return load_pipeline(self.pipeline)

    def vocab(self) -> dict[str, list[str]]:
        """Per kind, its tags by index (0: no tag)."""
        out = {}
        for kind in self.kinds:
            pipe = "tagger" if kind == "pos" else "ner"
            if pipe not in self.nlp.pipe_names:
                raise ValueError(
                    f"data.tags.kinds has {kind!r}, but the spaCy pipeline {self.pipeline!r} has no {pipe} "
                    f"(its components: {self.nlp.pipe_names})"
                )
            labels = list(self.nlp.get_pipe(pipe).labels)
            out[kind] = (
                ["<none>", *labels]
                if kind == "pos"
                else ["<none>", "O"] + [f"{b}-{label}" for label in labels for b in "BI"]
            )
        return out

    def identity(self) -> str:
        """What the cached tags depend on: the pipeline, its name and version, the kinds and their tags."""
        meta = self.nlp.meta
        return json.dumps([self.pipeline, meta.get("name"), meta.get("version"), self.kinds, self.vocab()])

    def char_tags(self, sentences: list[str]) -> list[np.ndarray]:
        """Per sentence, (len(sentence), K) tag indices of each character (0 outside tokens)."""
        vocab = {kind: {tag: i for i, tag in enumerate(tags)} for kind, tags in self.vocab().items()}
        out = []
        for text, doc in zip(sentences, self.nlp.pipe(sentences)):
            tags = np.zeros((len(text), len(self.kinds)), dtype=np.int16)
            for token in doc:
                span = slice(token.idx, token.idx + len(token))
                for k, kind in enumerate(self.kinds):
                    if kind == "pos":
                        tag = token.tag_
                    else:
                        tag = "O" if token.ent_iob_ in ("O", "") else f"{token.ent_iob_}-{token.ent_type_}"
                    tags[span, k] = vocab[kind].get(tag, 0)
            out.append(tags)
        return out


def align(encoding, char_tags: list[np.ndarray], kinds: int) -> np.ndarray:
    """(pieces, K) tags of one tokenised sequence (a tokenizers Encoding of one sentence or a pair): each
    piece gets the tag of its first character in its own sentence; special tokens get 0."""
    out = np.zeros((len(encoding.ids), kinds), dtype=np.int16)
    for j, (seq, (start, end)) in enumerate(zip(encoding.sequence_ids, encoding.offsets)):
        if seq is not None and end > start:
            out[j] = char_tags[seq][start]
    return out
