"""The training loop on the DeepSpeed engine: train_step, evaluate, checkpoint, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from bertmt.config import ExperimentConfig, save_config
from bertmt.data.batching import model_inputs
from bertmt.engine import checkpoint as ckpt
from bertmt.engine import deepspeed_compat
from bertmt.engine.build import build_model, save_encoder_config
from bertmt.engine.deepspeed_config import build_deepspeed_config
from bertmt.engine.logger import MetricWriter
from bertmt.engine.losses import task_loss
from bertmt.engine.optim import build_optimizer, refresh_lr, shared_group_indices
from bertmt.engine.preemption import REQUEUE, Diverged, Preempted, Pruned, StopCheck, slurm_job
from bertmt.engine.runtime import init_distributed, setup_logging, write_run_info
from bertmt.engine.surgery import make_step
from bertmt.engine.train_data import load_train_data
from bertmt.engine.train_metrics import RunningMeans, format_dev
from bertmt.engine.train_state import Stateful, TrainState, client_state, restore
from bertmt.evaluation.predict import evaluate_tasks, to_predictions, write_predictions
from bertmt.files import atomic_write
from bertmt.model import load_tokenizer
from bertmt.mtl.loss_weighting import weighting_from_config
from bertmt.mtl.smart import Smart
from bertmt.rundir import RunDir

EpochCallback = Callable[[dict], bool]  # an epoch's history entry -> stop now (see Trainer.fit)

log = logging.getLogger(__name__)


class Trainer:
    """One training run (or one phase of a phased run, see engine/phases.py) in ``cfg.run.dir``.

    ``init_from``: start from these weights (an earlier phase's best model) instead of the pretrained encoder
    with fresh heads; ignored when the run directory has a checkpoint to resume from.
    """

    def __init__(self, cfg: ExperimentConfig, init_from: Path | None = None) -> None:
        self.cfg = cfg
        self.run = RunDir(cfg.run.dir)
        self._owns_group = not dist.is_initialized()  # a caller's group (tune workers) outlives the run
        self.rank, self.world = init_distributed(cfg.train.dist_timeout_s)
        self.is_main = self.rank == 0
        setup_logging(self.run.train_log, self.rank)
        self.specs = {t: cfg.task_spec(t) for t in cfg.tasks}
        self.tokenizer = load_tokenizer(cfg.model.pretrained, cfg.data.max_length)
        self._load_data()
        model = build_model(cfg, init_from)  # with an MLM head when train.objective=mlm
        self.total_steps = cfg.train.epochs * self.batches_per_epoch // cfg.train.grad_accum
        optimizer, lr_schedule, self.plateau = build_optimizer(model, cfg.optim, self.total_steps)
        self.ds_config = build_deepspeed_config(cfg, self.world)
        import deepspeed

        deepspeed_compat.check_version()
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=lr_schedule, config=self.ds_config
        )
        deepspeed_compat.clear_stale_zero3_gradients(self.engine)
        self.hessian = None  # SophiaH's Hessian estimate (optim.name=sophia)
        if cfg.optim.name == "sophia":  # pytorch-optimizer imported only then (0.5-1 s of start-up)
            from bertmt.engine.hessian import HutchinsonDiagonal

            self.hessian = HutchinsonDiagonal(optimizer, cfg.run.seed, self.world, cfg.train.grad_accum)
        self.opt_step = make_step(
            self.engine, list(self.samplers), cfg, shared_group_indices(self.engine.optimizer)
        )
        steps_per_epoch = self.batches_per_epoch // cfg.train.grad_accum
        self.weighting = weighting_from_config(cfg.mtl, list(self.samplers), steps_per_epoch)
        self.loss_weights: dict[str, float] = {}  # the loss weighting's weights in this step
        self.smart = None
        if cfg.mtl.smart.enabled:  # under ZeRO-3 the teacher is a whole model of its own
            build = (lambda: build_model(cfg, init_from)) if cfg.train.zero_stage == 3 else None
            self.smart = Smart(self.engine.module, cfg.mtl.smart, build)
        job = slurm_job()
        if job is not None:
            log.info("SLURM job %s, restart count %s", job["job_id"], job["restarts"])
        requeue_signal = job is not None or os.environ.get("BERTMT_HANDLE_SIGNALS") == "1"
        self.stops = StopCheck(cfg.slurm.signal, self.world, requeue_signal)
        self._nonfinite = ""  # what this rank saw since the last check (fp32/bf16), e.g. "sst loss nan"
        self._signal = 0
        self.state = TrainState(drawn={t: 0 for t in self.samplers})
        self._resume()
        self.writer = MetricWriter(self.run.tensorboard if self.is_main else None, self.state.step)
        if self.is_main:
            self._write_run_files()

    # ----------------------------------------------------------------------------------------- set-up

    def _load_data(self) -> None:
        data = load_train_data(self.cfg, self.tokenizer, self.rank, self.world)
        self.samplers, self.dev, self.schedule = data.samplers, data.dev, data.schedule
        self.batches_per_epoch = data.batches_per_epoch

    def _write_run_files(self) -> None:
        save_config(self.cfg, self.run.config)
        self.run.deepspeed_config.write_text(json.dumps(self.ds_config, indent=2))
        save_encoder_config(self.engine.module, self.run.encoder_config)
        self.tokenizer.save(str(self.run.tokenizer))
        write_run_info(self.run.run_info, self.world)

    def _resume(self) -> None:
        client = ckpt.load_checkpoint(self.engine, self.run.checkpoints)
        if client is None:
            return
        self.state = restore(client, self.samplers, self._stateful_parts())
        self._replay_plateau()
        log.info(
            "resuming at epoch %d, micro-batch %d, step %d",
            self.state.epoch + 1,
            self.state.index,
            self.state.step,
        )

    # ----------------------------------------------------------------------------------------- training

    def train_step(self) -> tuple[list[tuple[str, dict[str, float]]], int]:
        """One optimiser step: grad_accum micro-batches of the tasks the schedule names, then the step.
        Returns each micro-batch's task and losses (SMART terms too) for logging, and the real tokens seen."""
        st, accum = self.state, self.cfg.train.grad_accum
        tasks = [self.schedule.task_at(st.epoch, st.index + k, self.batches_per_epoch) for k in range(accum)]
        self.opt_step.begin(tasks)
        if self.weighting is not None:
            self.loss_weights = dict(zip(self.samplers, self.weighting.weights().tolist()))
        logged, tokens = [], 0
        if self.hessian is not None:
            self.hessian.begin(st.step)
        for task in tasks:
            values, n_tokens = self._micro_batch(task)
            logged.append((task, values))
            tokens += n_tokens
            st.index += 1
        if self.hessian is not None:
            self.hessian.finish()
        applied = self.opt_step.step()
        if self.weighting is not None:
            self._update_weighting(logged, applied)
        if self.smart is not None:
            self.smart.update_teacher()
        st.step += 1
        return logged, tokens

    def _update_weighting(self, logged: list[tuple[str, dict[str, float]]], applied: bool) -> None:
        """Each task's mean loss over the step's micro-batches, averaged over ranks (one all-reduce of T
        floats; every rank has the same micro-batch tasks), into the loss weighting after an applied step."""
        tasks = list(self.samplers)
        sums = torch.zeros(len(tasks), dtype=torch.float64)
        counts = torch.zeros(len(tasks), dtype=torch.float64)
        for task, values in logged:
            sums[tasks.index(task)] += values["loss"]  # times this rank's share n_r W / N of the batch
            counts[tasks.index(task)] += 1
        if self.world > 1:
            dist.all_reduce(sums)  # sum_r n_r W / N L_r = W x the global-batch mean
        if applied:
            present = (counts > 0).numpy()
            self.weighting.update((sums / (counts.clamp(min=1) * self.world)).numpy(), present)

    def _micro_batch(self, task: str) -> tuple[dict[str, float], int]:
        """Forward and backward of one micro-batch of ``task``; its losses and number of real tokens."""
        batch = self.samplers[task].next()
        inputs = model_inputs(batch, self.engine.device)
        labels = batch["labels"].to(self.engine.device)
        spec, weight = self.specs[task], self.cfg.tasks[task].weight
        share = float(batch["share"])  # this rank's part of the global batch (TaskSampler.next)
        outputs = self.opt_step.module(task, **inputs)
        loss = task_loss(spec, outputs, labels)
        logged = {"loss": loss.item()}
        total = loss
        if self.smart is not None:
            extra, parts = self.smart.loss(
                spec, lambda: self.engine.module(task, **inputs), inputs, task, outputs
            )
            total, logged = loss + extra, logged | parts
        if self.cfg.train.precision != "fp16":  # fp16: an overflow is the loss scaler's (a skipped step)
            bad = [f"{task} {k} {v}" for k, v in logged.items() if not math.isfinite(v)]
            self._nonfinite = self._nonfinite or ", ".join(bad)
        logged = {k: v * share for k, v in logged.items()}  # averaged over ranks: the global-batch mean
        weight *= self.loss_weights.get(task, 1.0)
        if self.hessian is not None:  # SophiaH's estimate (SMART is refused with it: total is loss)
            module = self.engine.module
            self.hessian.add(lambda: task_loss(spec, module(task, **inputs), labels) * (weight * share))
        self.opt_step.backward(task, total * (weight * share))  # divided by grad_accum in the step
        return logged, int(inputs["attention_mask"].sum()) if share > 0 else 0

    def fit(self, on_epoch: EpochCallback | None = None) -> dict:
        """Train the remaining epochs (or until ``train.patience`` epochs bring no better dev score);
        returns the best dev metrics (the content of metrics.json).

        ``on_epoch(entry)`` runs on rank 0 after every epoch's checkpoint, with the epoch's history entry
        (``{"epoch", "step", <task>: {...}, "overall"}``); when it returns True every rank stops (Pruned)."""
        start = time.time()
        self.engine.train()
        while self.state.epoch < self.cfg.train.epochs and not self.out_of_patience():
            self._train_epoch()
            self._end_epoch()
            if on_epoch is not None and self._rank0_says(on_epoch, self.state.history[-1]):
                if self.is_main:
                    atomic_write(self.run.history, json.dumps(self.state.history, indent=2))
                raise Pruned(self.state.epoch)
        if self.state.epoch < self.cfg.train.epochs:
            log.info("early stop: no better dev score for %d epoch(s)", self.cfg.train.patience)
        return self._finish(time.time() - start)

    def _rank0_says(self, ask: EpochCallback, entry: dict) -> bool:
        """Rank 0's answer, broadcast to every rank (the others do not call ``ask``)."""
        answer = torch.tensor([float(bool(ask(entry)))] if self.is_main else [0.0])
        if self.world > 1:
            dist.broadcast(answer, 0)
        return bool(answer.item())

    def out_of_patience(self) -> bool:
        st, patience = self.state, self.cfg.train.patience
        return patience is not None and st.best_epoch > 0 and st.epoch - st.best_epoch >= patience

    def _train_epoch(self) -> None:
        cfg, st, n = self.cfg, self.state, self.batches_per_epoch
        running = RunningMeans(list(self.samplers), self.world)
        bar = tqdm(
            total=n,
            initial=st.index,
            desc=f"epoch {st.epoch + 1}/{cfg.train.epochs}",
            disable=not self.is_main,
            mininterval=2.0,
            dynamic_ncols=True,
        )
        while st.index < n:
            logged, n_tokens = self.train_step()
            self._check_stop()
            running.add(logged, n_tokens)
            bar.update(len(logged))
            if st.step % cfg.run.log_every == 0:
                means = self._log_train(*running.pop())
                bar.set_postfix(
                    {k.split("/")[0]: f"{v:.3f}" for k, v in means.items() if k.endswith("/loss")}
                )
            if cfg.run.checkpoint_every and st.step % cfg.run.checkpoint_every == 0 and st.index < n:
                self.save_checkpoint()
            if self._signal:
                bar.close()
                name = self.stops.signal_name
                log.warning("%s received: stopping at step %d to checkpoint", name, st.step)
                self.save_checkpoint()
                requeue = self._signal == REQUEUE and cfg.slurm.requeue
                raise Preempted(st.step, self.stops.requeue(self.rank, requeue), name)
        bar.close()

    def _check_stop(self) -> None:
        """After every optimiser step, all ranks agree: a signal (checkpoint and stop after the step's
        logging) or divergence (stop now, before anything is saved from the non-finite state)."""
        norm = self.engine.get_global_grad_norm() if self.cfg.train.precision != "fp16" else None
        if norm is not None and not math.isfinite(float(norm)):
            self._nonfinite = self._nonfinite or f"gradient norm {float(norm)}"
        self._signal, diverged = self.stops.poll(bool(self._nonfinite))
        if diverged:
            latest = ckpt.latest_tag(self.run.checkpoints)
            raise Diverged(
                f"non-finite values at optimiser step {self.state.step} ("
                + (self._nonfinite or "on another rank")
                + "); nothing was saved from it: the last good state is "
                + (f"checkpoint {latest}" if latest else "the start (no checkpoint yet)")
                + ". Lower optim.lr, raise optim.warmup_ratio or set optim.grad_clip"
            )

    def _log_train(self, means: dict[str, float], tokens_per_s: float) -> dict[str, float]:
        scalars = {f"train/{k}": v for k, v in means.items()}
        scalars["train/lr"] = self.engine.get_lr()[0]
        scalars["train/tokens_per_s"] = tokens_per_s * self.world
        if self.cfg.train.precision == "fp16":
            scalars["train/loss_scale"] = float(self.engine.optimizer.cur_scale)
            scalars["train/skipped_steps"] = float(self.engine.skipped_steps)
        scalars |= self.opt_step.scalars()
        if self.weighting is not None:
            scalars |= self.weighting.scalars()
        self.writer.log(scalars, self.state.step)
        log.info(
            "step %d/%d  %s  lr %.2e  %.0f tok/s",
            self.state.step,
            self.total_steps,
            "  ".join(f"{k.split('/')[0]} {v:.4f}" for k, v in means.items() if k.endswith("/loss")),
            scalars["train/lr"],
            scalars["train/tokens_per_s"],
        )
        return means

    def _end_epoch(self) -> None:
        st = self.state
        counts = self.schedule.counts(st.epoch, self.batches_per_epoch)
        self.writer.log(
            {f"schedule/{t}/fraction": c / self.batches_per_epoch for t, c in counts.items()}, st.step
        )
        log.info("epoch %d task batches: %s", st.epoch + 1, counts)
        results = self.evaluate()
        if not math.isfinite(results["overall"]):
            raise Diverged(f"dev metrics of epoch {st.epoch + 1} are not finite: {results}")
        st.history.append({"epoch": st.epoch + 1, "step": st.step, **results})
        self._replay_plateau()
        improved = results["overall"] > st.best_score
        if improved:
            st.best_score, st.best_epoch = results["overall"], st.epoch + 1
            self._save_best(results)
        log.info(
            "epoch %d dev: %s  overall %.4f%s",
            st.epoch + 1,
            format_dev(results, self.specs),
            results["overall"],
            " (best)" if improved else "",
        )
        st.epoch, st.index = st.epoch + 1, 0
        self.save_checkpoint()

    def _replay_plateau(self) -> None:
        """optim.schedule=plateau: the learning rate's multiplier after the epochs evaluated so far."""
        if self.cfg.optim.schedule != "plateau":
            return
        before = self.plateau.scale
        if self.plateau.replay([h["overall"] for h in self.state.history]) != before:
            refresh_lr(self.engine.lr_scheduler)
            log.info("dev score on a plateau: learning rate x %g", self.plateau.scale)

    def evaluate(self) -> dict:
        """Dev metrics of the current model, each example scored once across ranks; logged to TensorBoard."""
        results, self._dev_outputs = evaluate_tasks(
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
        error = ""
        if self.is_main:
            info = {"epoch": self.state.epoch + 1, "step": self.state.step, "metrics": results}
            try:
                ckpt.save_best(state, self.run.best, info)
                for task, outputs in self._dev_outputs.items():
                    write_predictions(
                        self.run.prediction(task, "dev"),
                        self.specs[task],
                        self.dev[task].ids,
                        to_predictions(self.specs[task], outputs),
                    )
            except Exception as exc:  # a full disk: OSError, or the safetensors writer's own error type
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
        error = ckpt.any_rank(error)
        if error:
            latest = ckpt.latest_tag(self.run.checkpoints)
            raise ckpt.CheckpointError(
                f"could not write the best model to {self.run.best}: {error}; the previous best model there "
                f"and the last checkpoint ({latest or 'none yet'}) are intact"
            )

    def save_checkpoint(self) -> None:
        client = client_state(self.state, self.samplers, self._stateful_parts())
        ckpt.save_checkpoint(self.engine, self.run.checkpoints, f"step-{self.state.step}", client)

    def _stateful_parts(self) -> dict[str, Stateful]:
        """The parts besides the engine and the samplers whose state a checkpoint keeps."""
        parts = {"surgery": self.opt_step if self.cfg.mtl.per_task else None}
        parts.update(smart=self.smart, weighting=self.weighting)
        return {name: part for name, part in parts.items() if part is not None}

    def _finish(self, seconds: float) -> dict:
        best = next(h for h in self.state.history if h["epoch"] == self.state.best_epoch)
        metrics = {k: v for k, v in best.items() if k not in ("epoch", "step")}  # the dev results
        if self.is_main:
            atomic_write(self.run.metrics, json.dumps(metrics, indent=2))
            atomic_write(self.run.history, json.dumps(self.state.history, indent=2))
        log.info(
            "finished in %.0f s; best epoch %d: overall %.4f", seconds, self.state.best_epoch, best["overall"]
        )
        return metrics

    def close(self, keep_process_group: bool | None = None) -> None:
        """Release the engine and the process group: avoids gloo aborts. The group is kept when
        ``keep_process_group`` says so (another phase follows) or, by default, when it was there before this
        trainer (a tune worker's, for its next trial)."""
        self.writer.close()
        self.stops.close()
        self.engine.destroy()
        keep = not self._owns_group if keep_process_group is None else keep_process_group
        if dist.is_initialized() and not keep:
            dist.destroy_process_group()
