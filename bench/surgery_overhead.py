"""Cost of every multitask method (the Gram methods on the surgery path, the loss weightings on the plain
path) against plain training on MiniLM with real batches, 1 and 2 processes, at a ZeRO stage: median step
time, the median time of the method's T x T solve (``Method.weights``), bytes handed to collectives per step
(every torch.distributed collective counted, bertmt/engine/comm_stats.py) and peak RSS per rank; plus a
straightforward per-parameter implementation (T backward passes with retain_graph, Python loops over
parameters, one collective per parameter per task) as the baseline the field uses (ZeRO 0 only: it steps
a torch optimiser itself).

    python bench/surgery_overhead.py [--zero-stage 2] [--steps 5] [--batch-size 16] [--variants plain mgda]
    python bench/surgery_overhead.py --solve-only [--tasks 3]   # only the T x T solves, no model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_FILES, data_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = list(TRAIN_FILES)


def _variants() -> list[str]:
    from bertmt.mtl import METHODS, WEIGHTINGS

    gram = sorted((m for m in METHODS if m != "none"), key=lambda m: (m not in ("pcgrad", "gradvac"), m))
    return ["plain", *gram, *WEIGHTINGS, "naive-pcgrad"]


def _trainer(method: str, batch: int, run_dir: str, stage: int):
    from bertmt.config import load_config
    from bertmt.engine.trainer import Trainer

    overrides = [
        f"data.dir={data_dir()}",
        f"run.dir={run_dir}",
        "train.grad_accum=3",
        "train.epochs=1",
        "train.batches_per_epoch=300",
        "data.max_length=64",
        "tasks.sst.test=null",
        "tasks.sts.test=null",
        f"mtl.method={method.replace('naive-', '').replace('plain', 'none')}",
        f"mtl.dwa.window={10 if method == 'dwa' else 0}",
        "run.log_every=1000",
        f"train.zero_stage={stage}",
    ]
    overrides += [f"tasks.{t}.batch_size={batch}" for t in TASKS]
    return Trainer(load_config(REPO / "configs" / "quickstart.yaml", overrides))


def _naive_pcgrad_step(trainer, opt, world: int) -> None:
    from bertmt.engine.losses import task_loss

    model = trainer.engine.module
    shared = model.shared_parameters()
    losses = []
    for task in TASKS:
        b = trainer.samplers[task].next()
        out = model(task, b["input_ids"], b["attention_mask"], b["token_type_ids"])
        losses.append(task_loss(trainer.specs[task], out, b["labels"]))
    grads, heads = [], {}
    for task, loss in zip(TASKS, losses):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        flat = []
        for p in shared:  # one collective per parameter per task
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()  # unused: the pooler
            if world > 1:
                dist.all_reduce(g)
                g /= world
            flat.append(g.reshape(-1))
        grads.append(torch.cat(flat))
        heads[task] = [p.grad.detach().clone() for p in model.task_parameters(task)]
    projected = []
    for i, g in enumerate(grads):  # PCGrad on whole D-sized vectors
        g = g.clone()
        for j in torch.randperm(len(grads)).tolist():
            dot = g @ grads[j]
            if j != i and dot < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    total, offset = torch.stack(projected).sum(0), 0
    for p in shared:
        p.grad = total[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    for task, gs in heads.items():
        for p, g in zip(model.task_parameters(task), gs):
            p.grad = g
    opt.step()


def worker(method: str, steps: int, batch: int, out: str, stage: int) -> None:
    from bertmt.engine.comm_stats import CollectiveCounter

    counter = CollectiveCounter().install()  # before DeepSpeed sets up its communication backend
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(method, batch, tmp, stage)
        world = trainer.world
        opt = (
            torch.optim.AdamW(trainer.engine.module.parameters(), lr=1e-5)
            if method.startswith("naive")
            else None
        )
        times, sent, solves = [], [], []
        method = getattr(trainer.opt_step, "method", None)
        if method is not None:  # time the T x T solve inside the step
            weights = method.weights

            def timed(*a, **k):
                start = time.perf_counter()
                out = weights(*a, **k)
                solves.append(time.perf_counter() - start)
                return out

            method.weights = timed
        for _ in range(steps + 1):  # the first step warms up
            before = counter.snapshot()
            start = time.perf_counter()
            if opt is not None:
                _naive_pcgrad_step(trainer, opt, world)
            else:
                trainer.train_step()
            if world > 1:
                dist.barrier()
            times.append(time.perf_counter() - start)
            sent.append(sum(CollectiveCounter.delta(counter.snapshot(), before)["bytes"].values()))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
        peak = [torch.tensor(float(rss))]
        if world > 1:
            peak = [torch.zeros(1) for _ in range(world)]
            dist.all_gather(peak, torch.tensor([float(rss)]))
        if trainer.rank == 0:
            result = {
                "step_s": sorted(times[1:])[len(times[1:]) // 2],
                "bytes": sorted(sent[1:])[len(sent[1:]) // 2],
                "rss": max(float(p) for p in peak),
                "solve_s": sorted(solves[1:])[len(solves[1:]) // 2] if len(solves) > 1 else None,
            }
            Path(out).write_text(json.dumps(result))
        trainer.close()


def solve_only(tasks: int, repeats: int = 200) -> None:
    """Median and max milliseconds of each Gram method's ``weights`` on T x T Gram matrices of random
    1000-dimensional gradients (one pair of tasks conflicting); the solve does not depend on D."""
    import numpy as np

    from bertmt.mtl import METHODS, make_method

    rng = np.random.default_rng(0)
    grams = []
    for _ in range(repeats):
        g = rng.normal(size=(tasks, 1000))
        g[1] = -0.5 * g[0] + rng.normal(size=1000)
        grams.append(torch.from_numpy(g @ g.T))
    print(f"T = {tasks}: milliseconds per solve over {repeats} Gram matrices (median, max)")
    for name in sorted(METHODS):
        method, times = make_method(name, tasks), []
        for gram in grams:
            start = time.perf_counter()
            method.weights(gram)
            times.append((time.perf_counter() - start) * 1000)
        print(f"  {name:<12} {sorted(times)[len(times) // 2]:8.3f} {max(times):8.3f}")


def launch(method: str, nproc: int, args) -> dict:
    out = Path(tempfile.mkdtemp()) / "result.json"
    script = [
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(out),
        "--zero-stage",
        str(args.zero_stage),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, 2 // nproc)), TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    prefix = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    )
    subprocess.run(
        prefix + script, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=2)
    parser.add_argument("--worker")
    parser.add_argument("--out")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", help="default: every method (naive-pcgrad at ZeRO 0 only)")
    parser.add_argument("--solve-only", action="store_true", help="time the T x T solves alone")
    parser.add_argument("--tasks", type=int, default=3, help="--solve-only: T")
    args = parser.parse_args()
    if args.solve_only:
        return solve_only(args.tasks)
    if args.worker:
        return worker(args.worker, args.steps, args.batch_size, args.out, args.zero_stage)
    print(
        f"MiniLM-L6, 3 tasks, one real micro-batch of {args.batch_size} per task per optimiser step "
        f"(grad_accum 3), max_length 64, median of {args.steps} steps; 2 cores; ZeRO {args.zero_stage}"
    )
    variants = args.variants or [v for v in _variants() if args.zero_stage == 0 or not v.startswith("naive")]
    if "plain" not in variants:
        variants = ["plain", *variants]
    for nproc in args.nproc:
        res = {}
        print(
            f"\n{nproc} process(es):  {'ms/step':>8} {'x plain':>8} {'solve ms':>9} {'MB sent/step':>13} "
            f"{'x plain':>8} {'peak RSS/rank MB':>17}",
            flush=True,
        )
        for v in variants:
            r = res[v] = launch(v, nproc, args)
            base = res["plain"]
            ratio = f"{r['bytes'] / base['bytes']:8.3f}" if base["bytes"] else f"{'-':>8}"
            solve = f"{r['solve_s'] * 1000:9.2f}" if r["solve_s"] is not None else f"{'-':>9}"
            print(
                f"  {v:<14} {r['step_s'] * 1000:8.0f} {r['step_s'] / base['step_s']:8.2f} {solve} "
                f"{r['bytes'] / 1e6:13.2f} {ratio} {r['rss'] / 2**20:17.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
