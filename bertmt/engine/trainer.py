"""The training loop on the DeepSpeed engine: train_step, evaluate, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist
from tqdm.auto import tqdm

from bertmt.config import ExperimentConfig, save_config
from bertmt.data.batching import TaskSampler
from bertmt.data.loading import load_split
from bertmt.data.schedule import make_schedule
from bertmt.data.tasks import get_task
from bertmt.engine import checkpoint as ckpt
from bertmt.engine.build import build_model, save_encoder_config
from bertmt.engine.deepspeed_config import build_deepspeed_config
from bertmt.engine.logger import MetricWriter
from bertmt.engine.losses import task_loss
from bertmt.engine.optim import build_optimizer
from bertmt.engine.runtime import init_distributed, setup_logging, write_run_info
from bertmt.evaluation.predict import evaluate_tasks, write_predictions
from bertmt.model import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue exactly."""

    epoch: int = 0  # current epoch (0-based)
    index: int = 0  # next micro-batch of the epoch
    step: int = 0  # optimiser steps done
    drawn: dict[str, int] = field(default_factory=dict)  # batches drawn per task sampler
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)  # dev metrics after each epoch


class Trainer:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.rank, self.world = init_distributed()
        self.is_main = self.rank == 0
        setup_logging(self.run_dir, self.rank)
        self.specs = {t: get_task(t) for t in cfg.tasks}
        self.tokenizer = load_tokenizer(cfg.model.pretrained, cfg.data.max_length)
        self._load_data()
        model = build_model(cfg)
        self.schedule = make_schedule(cfg.train.task_schedule, list(self.samplers), cfg.run.seed)
        self.total_steps = cfg.train.epochs * self.batches_per_epoch // cfg.train.grad_accum
        optimizer, lr_schedule = build_optimizer(model, cfg.optim, self.total_steps)
        self.ds_config = build_deepspeed_config(cfg, self.world)
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=lr_schedule, config=self.ds_config
        )
        self.state = TrainState(drawn={t: 0 for t in self.samplers})
        self._resume()
        self.writer = MetricWriter(self.run_dir / "tensorboard" if self.is_main else None, self.state.step)
        if self.is_main:
            self._write_run_files()

    # ----------------------------------------------------------------------------------------- set-up

    def _load_data(self) -> None:
        cfg = self.cfg
        self.samplers: dict[str, TaskSampler] = {}
        self.dev = {}
        for task in cfg.tasks:
            train = load_split(cfg, task, "train", self.tokenizer)
            if train is not None:
                self.samplers[task] = TaskSampler(
                    train,
                    cfg.tasks[task].batch_size,
                    cfg.data.bucket_pool,
                    seed=cfg.run.seed + zlib.crc32(task.encode()),
                    rank=self.rank,
                    world=self.world,
                )
            dev = load_split(cfg, task, "dev", self.tokenizer)
            if dev is not None:
                self.dev[task] = dev
        per_epoch = cfg.train.batches_per_epoch or sum(len(s) for s in self.samplers.values())
        accum = cfg.train.grad_accum
        self.batches_per_epoch = -(-per_epoch // accum) * accum  # whole optimiser steps per epoch
        log.info(
            "tasks %s; %d micro-batches per epoch, %d epochs, world size %d",
            list(self.samplers),
            self.batches_per_epoch,
            cfg.train.epochs,
            self.world,
        )

    def _write_run_files(self) -> None:
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2))
        save_encoder_config(self.engine.module, self.run_dir / "encoder_config.json")
        self.tokenizer.save(str(self.run_dir / "tokenizer.json"))
        write_run_info(self.run_dir, self.world)

    def _resume(self) -> None:
        client = ckpt.load_checkpoint(self.engine, self.run_dir / "checkpoints")
        if client is None:
            return
        self.state = TrainState(**client["trainer"])
        ckpt.set_rng_state(client["rng"])
        for task, sampler in self.samplers.items():
            sampler.drawn = self.state.drawn[task]
        log.info(
            "resuming at epoch %d, micro-batch %d, step %d",
            self.state.epoch + 1,
            self.state.index,
            self.state.step,
        )

    # ----------------------------------------------------------------------------------------- training

    def train_step(self, task: str) -> tuple[float, int]:
        """Forward, backward and (at an accumulation boundary) optimiser step on a micro-batch of ``task``."""
        batch = {k: v.to(self.engine.device) for k, v in self.samplers[task].next().items()}
        out = self.engine(task, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = task_loss(self.specs[task], out, batch["labels"])
        self.engine.backward(loss * self.cfg.tasks[task].weight)
        self.engine.step()
        return loss.item(), int(batch["attention_mask"].sum())

    def fit(self) -> dict:
        """Train the remaining epochs; returns the best dev metrics (the content of metrics.json)."""
        start = time.time()
        self.engine.train()
        while self.state.epoch < self.cfg.train.epochs:
            self._train_epoch()
            self._end_epoch()
        return self._finish(time.time() - start)

    def _train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        sums, counts, tokens, t0 = defaultdict(float), defaultdict(int), 0, time.time()
        bar = tqdm(
            total=self.batches_per_epoch,
            initial=st.index,
            desc=f"epoch {st.epoch + 1}/{cfg.train.epochs}",
            disable=not self.is_main,
            mininterval=2.0,
            dynamic_ncols=True,
        )
        while st.index < self.batches_per_epoch:
            task = self.schedule.task_at(st.epoch, st.index)
            loss, n_tokens = self.train_step(task)
            sums[task] += loss
            counts[task] += 1
            tokens += n_tokens
            st.index += 1
            bar.update()
            if st.index % cfg.train.grad_accum:
                continue
            st.step += 1
            if st.step % cfg.run.log_every == 0:
                self._log_train(sums, counts, tokens / (time.time() - t0))
                bar.set_postfix({t: f"{sums[t] / counts[t]:.3f}" for t in counts})
                sums, counts, tokens, t0 = defaultdict(float), defaultdict(int), 0, time.time()
            if (
                cfg.run.checkpoint_every
                and st.step % cfg.run.checkpoint_every == 0
                and st.index < self.batches_per_epoch
            ):
                self.save_checkpoint()
        bar.close()

    def _log_train(self, sums: dict, counts: dict, tokens_per_s: float) -> None:
        scalars = {f"train/{t}/loss": sums[t] / counts[t] for t in counts}
        scalars["train/lr"] = self.engine.get_lr()[0]
        scalars["train/tokens_per_s"] = tokens_per_s
        if self.cfg.train.precision == "fp16":
            scalars["train/loss_scale"] = self.engine.optimizer.cur_scale
        self.writer.log(scalars, self.state.step)
        log.info(
            "step %d/%d  %s  lr %.2e  %.0f tok/s",
            self.state.step,
            self.total_steps,
            "  ".join(f"{t} {sums[t] / counts[t]:.4f}" for t in counts),
            scalars["train/lr"],
            tokens_per_s,
        )

    def _end_epoch(self) -> None:
        st = self.state
        results = self.evaluate()
        st.history.append({"epoch": st.epoch + 1, "step": st.step, **results})
        improved = results["overall"] > st.best_score
        if improved:
            st.best_score, st.best_epoch = results["overall"], st.epoch + 1
            self._save_best(results)
        log.info(
            "epoch %d dev: %s  overall %.4f%s",
            st.epoch + 1,
            _fmt(results, self.specs),
            results["overall"],
            " (best)" if improved else "",
        )
        st.epoch, st.index = st.epoch + 1, 0
        self.save_checkpoint()

    def evaluate(self) -> dict:
        """Dev metrics of the current model; logged to TensorBoard."""
        results, self._dev_preds = evaluate_tasks(
            self.engine.module,
            self.specs,
            self.dev,
            self.cfg.data.eval_batch_size,
            self.engine.device,
            show_progress=self.is_main,
        )
        scalars = {f"dev/{t}/{m}": v for t in self.dev for m, v in results[t].items()}
        self.writer.log({**scalars, "dev/overall": results["overall"]}, self.state.step)
        return results

    def _save_best(self, results: dict) -> None:
        state = ckpt.full_state_dict(self.engine)
        if self.is_main:
            ckpt.save_best(
                state,
                self.run_dir / "best",
                {"epoch": self.state.epoch + 1, "step": self.state.step, "metrics": results},
            )
            for task, preds in self._dev_preds.items():
                write_predictions(
                    self.run_dir / "predictions" / f"{task}-dev.csv",
                    self.specs[task],
                    self.dev[task].ids,
                    preds,
                )

    def save_checkpoint(self) -> None:
        st = self.state
        st.drawn = {t: s.drawn for t, s in self.samplers.items()}
        client = {"trainer": dataclasses.asdict(st), "rng": ckpt.rng_state()}
        ckpt.save_checkpoint(self.engine, self.run_dir / "checkpoints", f"step-{st.step}", client)

    def _finish(self, seconds: float) -> dict:
        best = next(h for h in self.state.history if h["epoch"] == self.state.best_epoch)
        metrics = {t: best[t] for t in self.dev} | {"overall": best["overall"]}
        if self.is_main:
            ckpt.atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
            ckpt.atomic_write_text(self.run_dir / "history.json", json.dumps(self.state.history, indent=2))
        log.info(
            "finished in %.0f s; best epoch %d: overall %.4f", seconds, self.state.best_epoch, best["overall"]
        )
        return metrics

    def close(self) -> None:
        """Release the engine and the process group (avoids gloo aborts at exit)."""
        self.writer.close()
        self.engine.destroy()
        if dist.is_initialized():
            dist.destroy_process_group()


def _fmt(results: dict, specs: dict) -> str:
    return "  ".join(
        f"{t} {specs[t].metric} {m[specs[t].metric]:.4f}" for t, m in results.items() if t in specs
    )
