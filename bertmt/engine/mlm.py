"""Task-adaptive pre-training (TAPT; Gururangan et al. 2020, discussed by the SMART paper and Dormoy et al.):
a phase with ``train.objective: mlm`` trains the encoder by masked-language modelling on the training
sentences of the configured tasks, before the task phases.

:class:`MlmTrainer` is the :class:`Trainer` with another data source and loss: one pseudo-task ``mlm``
whose rows are the distinct sentences of every task's training file (a pair gives both of its sentences),
masked row by row from seeds that depend only on the run seed, the micro-batch and the row (so a resumed run
masks as the uninterrupted one did, and ranks sharing a batch mask as one process would); its dev score is
the masked-token accuracy on the dev files' sentences, under fixed masks. Checkpoints, resume, signals and
logging are the Trainer's. The best model keeps the task heads untouched (and the MLM head, which the next
phase leaves behind).
"""

from __future__ import annotations

import logging
import math
import zlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bertmt.data.batching import TaskSampler, _tokenise, collate, eval_batches
from bertmt.data.schedule import TaskSchedule
from bertmt.engine.trainer import Trainer
from bertmt.model.mlm import IGNORE, mask_rows
from bertmt.model.multitask import MLM

log = logging.getLogger(__name__)


def sentences(loader, resolved: dict, split: str) -> list[str]:
    """The distinct sentences (first seen first) of every configured task's ``split`` file."""
    seen: dict[str, None] = {}
    for task in resolved.values():
        data = loader.read(task, split)
        for text in data.texts if data is not None else []:
            for sentence in text:
                seen.setdefault(sentence, None)
    return list(seen)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the predicted tokens (0, still in the graph, when a batch predicts none)."""
    if not len(targets):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


class MlmTrainer(Trainer):
    """Masked-language modelling of the tasks' sentences (see the module documentation)."""

    def _load_data(self) -> None:
        cfg = self.cfg
        loader = cfg.data.loader(self.tokenizer)
        self.tokenizer.enable_truncation(max_length=cfg.data.max_length)
        resolved = cfg.resolved_tasks()
        train, dev = sentences(loader, resolved, "train"), sentences(loader, resolved, "dev")
        enc = _tokenise(self.tokenizer, train, [str(i) for i in range(len(train))], None)
        self.dev_enc = _tokenise(self.tokenizer, dev, [str(i) for i in range(len(dev))], None)
        seed = cfg.run.seed + zlib.crc32(MLM.encode())
        self.samplers = {
            MLM: TaskSampler(enc, cfg.train.mlm_batch_size, cfg.data.bucket_pool, seed, self.rank, self.world)
        }
        self.dev = {}
        sizes, passes = {MLM: len(enc)}, {MLM: len(self.samplers[MLM])}
        self.schedule = TaskSchedule("round_robin", sizes, passes, cfg.train.epochs, cfg.run.seed)
        per_epoch = cfg.train.batches_per_epoch or passes[MLM]  # else one pass over the sentences
        accum = cfg.train.grad_accum
        self.batches_per_epoch = -(-per_epoch // accum) * accum
        vocab = self.tokenizer.get_vocab()
        self.mask_id = vocab["[MASK]"]
        self.special = [vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]") if t in vocab]
        log.info(
            "masked-language modelling of %d training sentences (dev: %d) of tasks %s; %d micro-batches per "
            "epoch, %d epochs",
            len(train),
            len(dev),
            list(resolved),
            self.batches_per_epoch,
            cfg.train.epochs,
        )

    def _masked(self, batch: dict, salt: int) -> tuple[dict, torch.Tensor]:
        """The batch with its rows masked (each row's seed: run seed, ``salt`` and its row index)."""
        rows = batch["rows"].tolist()
        seeds = [zlib.crc32(f"{self.cfg.run.seed}:{salt}:{r}".encode()) for r in rows]
        vocab = self.engine.module.encoder.config.vocab_size
        ids, labels = mask_rows(
            batch["input_ids"],
            batch["attention_mask"],
            seeds,
            self.special,
            self.mask_id,
            vocab,
            self.cfg.train.mlm_probability,
        )
        device = self.engine.device
        inputs = {
            "input_ids": ids.to(device),
            "attention_mask": batch["attention_mask"].to(device),
            "mlm_labels": labels.to(device),
        }
        return inputs, labels

    def _micro_batch(self, task: str) -> tuple[dict[str, float], int]:
        st = self.state
        batch = self.samplers[task].next()
        inputs, labels = self._masked(batch, st.epoch * self.batches_per_epoch + st.index)
        # every predicted token weighs 1 / (predicted tokens of the global batch), however the rows split
        here = torch.tensor(
            float((labels != IGNORE).sum()) if float(batch["share"]) > 0 else 0.0, dtype=torch.float64
        )
        total = here.clone()
        if self.world > 1:
            dist.all_reduce(total)
        logits = self.opt_step.module(task, **inputs)
        loss = mlm_loss(logits, labels[labels != IGNORE].to(logits.device))
        share = float(here) * self.world / max(float(total), 1.0)
        if not math.isfinite(loss.item()):
            self._nonfinite = self._nonfinite or f"mlm loss {loss.item()}"
        if self.hessian is not None:  # SophiaH's estimate (engine/hessian.py)
            module, picked = self.engine.module, labels[labels != IGNORE].to(logits.device)
            self.hessian.add(lambda: mlm_loss(module(task, **inputs), picked) * share)
        self.opt_step.backward(task, loss * share)
        return {"loss": loss.item() * share}, int(inputs["attention_mask"].sum()) if share > 0 else 0

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Masked-token accuracy and loss on the dev sentences (fixed masks), each row scored once across
        ranks: {"mlm": {"accuracy", "loss"}, "overall": accuracy}."""
        model = self.engine.module
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # correct, loss, predicted tokens
        batches = eval_batches(np.diff(self.dev_enc.offsets), self.cfg.data.eval_batch_size)
        for rows in batches[self.rank :: self.world]:
            batch = collate(self.dev_enc, rows)
            inputs, labels = self._masked(batch, -1)
            logits = model(MLM, **inputs).float()
            targets = labels[labels != IGNORE].to(logits.device)
            sums += torch.tensor(
                [
                    float((logits.argmax(-1) == targets).sum()),
                    float(F.cross_entropy(logits, targets, reduction="sum")) if len(targets) else 0.0,
                    float(len(targets)),
                ],
                dtype=torch.float64,
            )
        if self.world > 1:
            dist.all_reduce(sums)
        model.train(was_training)
        accuracy, loss = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        self._dev_outputs = {}
        self.writer.log({"dev/mlm/accuracy": accuracy, "dev/mlm/loss": loss}, self.state.step)
        log.info(
            "dev masked-token accuracy %.4f, loss %.4f (perplexity %.1f)", accuracy, loss, math.exp(loss)
        )
        return {MLM: {"accuracy": accuracy, "loss": loss}, "overall": accuracy}


def trainer_class(cfg) -> type[Trainer]:
    """The trainer of a config's objective."""
    return MlmTrainer if cfg.train.objective == "mlm" else Trainer
