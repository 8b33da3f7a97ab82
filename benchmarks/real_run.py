"""A user's real run, end to end, side by side: `legaltune train` vs Unsloth's recipe vs TRL + PEFT.

Every row is its own process, on the same data, with the same config values and the same number of
optimizer steps:

- ``legaltune``: ``legaltune train CONFIG --set model.model_name=DIR ...`` exactly as a user runs it;
- ``unsloth``: ``FastLanguageModel.from_pretrained`` + ``get_peft_model`` + TRL ``SFTTrainer`` with
  Unsloth's defaults (2026.10.9 turns padding-free batches on by itself for unpacked SFT data when
  ``padding_free`` is left unset, and keeps packing when the config packs);
- ``trl``: transformers + PEFT + TRL ``SFTTrainer`` with TRL's defaults (padded batches,
  transformers' gradient checkpointing when the config checkpoints).

Per row: wall-clock from process start to the end of the last step (load, data preparation and
compile included), time to the first optimizer step, steady tokens/s over real (non-padding) tokens
(steps after the third), recompiles (``TORCH_LOGS=recompiles``), peak GPU memory, peak host RSS of
the process tree, final loss. JSON is rewritten after every row.

    python3 benchmarks/real_run.py --model-dir /tmp/llama8b --presets recommended,h200 \\
        --rows legaltune,unsloth --out $OUT/real_run.json

``--row-set ROW:KEY=VALUE`` adds a ``--set`` to one row (``legaltune-<name>`` rows are legaltune
rows with their own settings); ``--profile ROW`` runs that legaltune row under ``py-spy record``.

``--presets dpo`` times DPO after SFT (``--data`` a pairs file, e.g. ``legaltune data make-preference
--negatives invented``): ``legaltune train`` with ``training.method: dpo`` against TRL's
``DPOTrainer`` on PEFT, from the same adapter (``--init-adapter``; made with random B weights on
the first run when the directory does not exist). The pairs are tokenized by legaltune for both;
the TRL row gets them back as prompt / chosen / rejected text and tokenizes them itself.

``--model-dir`` must hold a model and a tokenizer (``train_step.py --save-model DIR``, then the
embedded model's tokenizer files copied in; ``--tokenizer-from`` does the copy).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {
    "recommended": "configs/llama31-8b-recommended.yaml",
    "h200": "configs/llama31-8b-h200.yaml",
    "qlora": "configs/llama31-8b-qlora-24gb.yaml",
    "dpo": "benchmarks/configs/llama31-8b-dpo.yaml",  # --data PAIRS; trl row: TRL's DPOTrainer + PEFT
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _rss_tree(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _mem_available() -> float:
    from legaltune.speed.policy import host_memory_available  # torch-free

    return host_memory_available() or float("nan")  # not Linux: nan, reported as None


def _watch(proc: subprocess.Popen, peak: list[int], stop: threading.Event) -> None:
    """peak[0]: the row's largest summed RSS; peak[1]: the host's least MemAvailable (pinned pages
    are not always counted in RSS; the OOM killer acts on what is available)."""
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_tree(proc.pid))
        peak[1] = min(peak[1], _mem_available())
        stop.wait(0.5)


def overrides(args: argparse.Namespace, preset: str, row: str = "legaltune") -> list[str]:
    """The --set values every row shares: the model, the data, the step count; no eval or saving
    (the rows time training), a warm-up the run's length can reach."""
    sets = [
        f"model.model_name={args.model_dir}",
        'logging.eval_strategy="no"',
        'logging.save_strategy="no"',
        "logging.logging_steps=1",
        'logging.report_to=["none"]',
        f"logging.output_dir={args.work}/runs",
        f"logging.run_name={preset}-{row if row.startswith('legaltune') else 'legaltune'}",
    ]
    if args.data:
        # make_run_data.py repeats the bundled questions: a user's few thousand records are distinct,
        # so legaltune keeps every record as the peers' trainers (which never deduplicate) do
        sets += [f"data.train_file={args.data}", "data.eval_file=null", "data.dedup=false"]
    if preset in args.max_steps:
        sets.append(f"training.max_steps={args.max_steps[preset]}")
    if preset == "dpo":
        sets.append(f"training.init_adapter={args.init_adapter}")
    if preset == "h200":
        # seed 000's 100 warm-up steps exceed a run of the bundled data (4 steps): one step here
        sets += ["training.warmup_steps=1"]
    extra = [kv.split(":", 1)[1] for kv in args.row_set or [] if kv.split(":", 1)[0] == row]
    return sets + list(args.set or []) + extra


def run_row(args: argparse.Namespace, preset: str, row: str) -> dict:
    config = str(ROOT / PRESETS[preset])
    result_file = Path(args.work) / f"{preset}-{row}.json"
    result_file.unlink(missing_ok=True)
    sets = overrides(args, preset, row)
    if row.startswith("legaltune"):
        cmd = [sys.executable, "-m", "legaltune.cli", "train", config]
        for s in sets:
            cmd += ["--set", s]
        if row in args.profile:
            # py-spy samples the run from outside (no code change, ~1 % at 25 Hz): where start-up goes
            flame = Path(args.out).parent / f"{preset}-{row}.speedscope.json"
            cmd = [
                "py-spy",
                "record",
                "-r",
                "25",
                "--nonblocking",
                "-f",
                "speedscope",
                "-o",
                str(flame),
                "--",
                *cmd,
            ]
    else:
        cmd = [sys.executable, __file__, "--child", row, "--config", config, "--result", str(result_file)]
        for s in sets:
            cmd += ["--set", s]
    env = dict(os.environ, TORCH_LOGS="recompiles", PYTHONUNBUFFERED="1")
    log_path = Path(args.work) / f"{preset}-{row}.log"
    start = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak, stop = [0, _mem_available()], threading.Event()
        watcher = threading.Thread(target=_watch, args=(proc, peak, stop), daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        stop.set()
        watcher.join()
    text = log_path.read_text(errors="replace")
    out: dict = {
        "preset": preset,
        "row": row,
        "rc": rc,
        "process_s": round(time.time() - start, 1),
        "recompiles": text.count("Recompiling function"),
        "peak_host_rss_gib": round(peak[0] / 2**30, 2),
        "min_host_available_gib": round(peak[1] / 2**30, 2) if peak[1] == peak[1] else None,
        "log_tail": text[-1500:] if rc != 0 else "",
    }
    if row.startswith("legaltune"):
        steps, extra = _legaltune_steps(Path(args.work) / "runs" / f"{preset}-{row}")
    else:
        try:
            data = json.loads(result_file.read_text())
        except (OSError, ValueError):
            data = {"steps": []}
        steps, extra = data.pop("steps"), data
    out.update(extra)
    out.update(summarise(steps, start))
    return out


def _legaltune_steps(run_dir: Path) -> tuple[list[dict], dict]:
    steps: list[dict] = []
    pinned: dict = {}
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            for key in ("pinned_host_gib", "pinned_used_peak_gib", "pinned_register_s"):
                if key in row:
                    pinned[key] = max(pinned.get(key, 0.0), row[key])
            if "loss" in row and "time" in row:
                steps.append(
                    {"step": row["step"], "time": row["time"], "tokens": row["tokens"], "loss": row["loss"],
                     "peak_gib": row.get("peak_memory_gib")}
                )  # fmt: skip
    except OSError:
        return [], {}
    extra: dict = dict(pinned)  # the offloader's arena: reserved, most in use at once, time to make it
    try:
        summary = json.loads((run_dir / "train_summary.json").read_text())
        extra["plan"] = summary.get("plan")
        extra["speed"] = (summary.get("speed") or {}).get("checkpointing")
        extra["startup"] = summary.get("startup")  # seconds per phase before full speed
    except (OSError, ValueError):
        pass
    try:
        stats = json.loads((run_dir / "data_stats.json").read_text())
        extra["data_efficiency"] = (stats.get("train") or {}).get("efficiency")  # padded fractions
    except (OSError, ValueError):
        pass
    return steps, extra


def summarise(steps: list[dict], start: float) -> dict:
    if not steps:
        return {"steps": 0}
    first, last = steps[0], steps[-1]
    k = min(3, len(steps) - 1)
    base = steps[k - 1] if k >= 1 else None
    steady = per_step = None
    if base is not None and last["time"] > base["time"]:
        steady = (last["tokens"] - base["tokens"]) / (last["time"] - base["time"])
        per_step = (last["time"] - base["time"]) / (last["step"] - base["step"])
    return {
        "steps": len(steps),
        "wall_to_last_step_s": round(last["time"] - start, 1),
        "first_step_s": round(first["time"] - start, 1),
        "steady_tokens_per_s": round(steady, 1) if steady else None,
        "steady_s_per_step": round(per_step, 3) if per_step else None,
        "tokens": last["tokens"],
        "final_loss": last["loss"],
        "peak_gpu_gib": max((s.get("peak_gib") or 0) for s in steps) or None,
        "step_times": [round(b["time"] - a["time"], 2) for a, b in itertools.pairwise(steps)],
    }


# --------------------------------------------------------------------------------------------------
# Child rows: Unsloth's recipe and plain TRL + PEFT, on the config's values.


def _texts(cfg, tokenizer) -> list[str]:
    """The prepared training examples as text (chat template applied, as a `text` dataset)."""
    from legaltune.data.prepare import prepare_data

    # the examples one by one: a packing config lets the trainer under test pack them itself
    unpacked = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, packing=False))
    data = prepare_data(unpacked, tokenizer)
    return [tokenizer.decode(r["input_ids"]) for r in data.train]


class _StepClock:
    """TrainerCallback: wall time, real tokens and loss at every optimizer step."""

    def __new__(cls, counter, result: Path):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.steps: list[dict] = []

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    import torch

                    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
                    self.steps.append(
                        {"step": state.global_step, "time": time.time(), "tokens": int(counter[0]),
                         "loss": logs["loss"], "peak_gib": round(peak, 3)}
                    )  # fmt: skip
                    # after every step: a row stopped by --row-timeout still reports the steps it made
                    result.write_text(json.dumps({"steps": self.steps, "partial": True}))

        return Clock()


def _count_real_tokens(trainer, counter: list) -> None:
    """Count real tokens per micro-batch on the trainer instance (mask sum, or every token of a
    padding-free row)."""
    original = trainer.training_step

    def training_step(model, inputs, *a, **k):
        mask = inputs.get("attention_mask")
        n = mask.sum() if mask is not None and mask.dim() == 2 else inputs["input_ids"].numel()
        counter[0] = counter[0] + n
        return original(model, inputs, *a, **k)

    trainer.training_step = training_step


def _device_map():  # noqa: ANN202
    import torch

    return {"": 0} if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of a row


def _trainer_args(cfg, row: str, config_cls) -> dict:  # noqa: ANN001
    """The trainer arguments every child row takes from the config (as `legaltune train` does)."""
    import torch

    t = cfg.training
    out = {
        "output_dir": tempfile.mkdtemp(prefix=f"real-run-{row}-"),
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "weight_decay": t.weight_decay,
        "optim": cfg.optimization.optim,
        "bf16": torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": cfg.effective_seed,
        "max_length": cfg.model.max_seq_length,
        "dataloader_num_workers": cfg.data.dataloader_num_workers,
        "dataloader_pin_memory": cfg.data.dataloader_pin_memory,
    }
    if t.warmup_ratio is not None:
        # transformers ≥ 5.18 reads a fraction in warmup_steps; older 5.x has warmup_ratio
        has_ratio = "warmup_ratio" in {f.name for f in dataclasses.fields(config_cls)}
        out["warmup_ratio" if has_ratio else "warmup_steps"] = t.warmup_ratio
    else:
        out["warmup_steps"] = t.warmup_steps or 0
    return out


def _trl_checkpointing(cfg) -> dict:  # noqa: ANN001
    """TRL's own (transformers') recompute, when the config checkpoints."""
    on = bool(cfg.optimization.gradient_checkpointing and cfg.lora.use_gradient_checkpointing)
    return (
        {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
        if on
        else {"gradient_checkpointing": False}
    )


def make_adapter(model_dir: str, cfg, out: str) -> None:
    """An adapter standing in for an SFT run's: cfg.lora's shape, B drawn small (so the policy and
    the reference start away from the base, as after SFT)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lo = cfg.lora
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=_device_map())
    peft = get_peft_model(
        model,
        LoraConfig(
            r=lo.r, lora_alpha=lo.lora_alpha, target_modules=list(lo.target_modules), task_type="CAUSAL_LM"
        ),
    )
    generator = torch.Generator(model.device).manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01, generator=generator)
    peft.save_pretrained(out)


def dpo_child(args: argparse.Namespace, cfg) -> int:
    """TRL's DPOTrainer on PEFT from the same adapter and pairs, with the config's values."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from legaltune.data.preference import prepare_pairs

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.model_name)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.model_name, dtype=torch.bfloat16, attn_implementation="sdpa", device_map=_device_map()
    )
    model = PeftModel.from_pretrained(model, cfg.training.init_adapter, is_trainable=True)
    pairs = prepare_pairs(cfg, tokenizer).train
    text = Dataset.from_list(
        [
            {side: tokenizer.decode(p[f"{side}_ids"]) for side in ("prompt", "chosen", "rejected")}
            for p in pairs
        ]
    )
    config = DPOConfig(
        **_trainer_args(cfg, "trl-dpo", DPOConfig), **_trl_checkpointing(cfg), beta=cfg.preference.beta
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=text, processing_class=tokenizer)
    counter = [0]
    _count_real_tokens(trainer, counter)
    clock = _StepClock(counter, Path(args.result))
    trainer.add_callback(clock)
    trainer.train()
    Path(args.result).write_text(json.dumps({"pairs": len(pairs), "steps": clock.steps}))
    return 0


def child_main(args: argparse.Namespace) -> int:
    from legaltune.config.load import load_config

    cfg = load_config(args.config, overrides=args.set or [])
    row = args.child
    if cfg.training.method == "dpo":
        return dpo_child(args, cfg)
    if row == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers and TRL as its users do)
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    lo, q = cfg.lora, cfg.quantization
    if row == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=cfg.model.model_name,
            max_seq_length=cfg.model.max_seq_length,
            dtype=None,
            load_in_4bit=q.load_in_4bit,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=lo.r,
            target_modules=list(lo.target_modules),
            lora_alpha=lo.lora_alpha,
            lora_dropout=lo.lora_dropout,
            bias=lo.bias,
            use_gradient_checkpointing=lo.use_gradient_checkpointing,
            random_state=lo.random_state,
            use_rslora=lo.use_rslora,
            max_seq_length=cfg.model.max_seq_length,
        )
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.model_name)
        kwargs = {"dtype": torch.bfloat16, "attn_implementation": "sdpa", "device_map": _device_map()}
        if q.load_in_4bit:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(cfg.model.model_name, **kwargs)
        model = get_peft_model(
            model,
            LoraConfig(
                r=lo.r, lora_alpha=lo.lora_alpha, lora_dropout=lo.lora_dropout, bias=lo.bias,
                target_modules=list(lo.target_modules), use_rslora=lo.use_rslora, task_type="CAUSAL_LM",
            ),
        )  # fmt: skip
    texts = _texts(cfg, tokenizer)
    sft = {**_trainer_args(cfg, row, SFTConfig), "dataset_text_field": "text", "packing": cfg.data.packing}
    if row == "trl":
        sft.update(_trl_checkpointing(cfg))
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"text": texts}),
        args=SFTConfig(**sft),
    )
    counter = [0]
    _count_real_tokens(trainer, counter)
    clock = _StepClock(counter, Path(args.result))
    trainer.add_callback(clock)
    trainer.train()
    info = {
        "padding_free": bool(getattr(trainer.args, "padding_free", False)),
        "packing": bool(getattr(trainer.args, "packing", False)),
        "steps": clock.steps,
    }
    Path(args.result).write_text(json.dumps(info))
    return 0


# --------------------------------------------------------------------------------------------------


def prepare_model_dir(args: argparse.Namespace) -> None:
    if args.tokenizer_from:
        for name in TOKENIZER_FILES:
            src = Path(args.tokenizer_from) / name
            if src.exists():
                shutil.copy(src, Path(args.model_dir) / name)


def parent_main(args: argparse.Namespace) -> int:
    prepare_model_dir(args)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if "dpo" in args.presets and not Path(args.init_adapter, "adapter_config.json").exists():
        cmd = [sys.executable, __file__, "--make-adapter", args.init_adapter, "--model-dir", args.model_dir]
        subprocess.run(cmd, check=True, cwd=ROOT)
    out_path = Path(args.out)
    results: list[dict] = []
    deadline = time.time() + args.budget_s
    plan = [(p, r) for p in args.presets for r in args.rows]
    for i, (preset, row) in enumerate(plan):
        if time.time() > deadline:
            results.append({"preset": preset, "row": row, "skipped": "budget"})
            continue
        print(f"[{i + 1}/{len(plan)}] {preset} / {row} …", flush=True)
        res = run_row(args, preset, row)
        results.append(res)
        keys = ("rc", "wall_to_last_step_s", "first_step_s", "steady_tokens_per_s", "recompiles",
                "peak_gpu_gib", "peak_host_rss_gib", "final_loss", "steps")  # fmt: skip
        print("   ", {k: res.get(k) for k in keys}, flush=True)
        if res.get("startup"):
            print(
                "    startup",
                res["startup"].get("phases_s"),
                "compile",
                res["startup"].get("compile_s"),
                flush=True,
            )
        if res.get("rc") != 0:
            print(res.get("log_tail", ""), flush=True)
        out_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": results}, indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="model + tokenizer directory (random-weight 8B)")
    p.add_argument("--tokenizer-from", help="copy these tokenizer files into --model-dir first")
    p.add_argument("--presets", default="recommended,h200", help=f"comma list of {', '.join(PRESETS)}")
    p.add_argument(
        "--rows",
        default="legaltune,unsloth,trl",
        help="comma list of legaltune, legaltune-warm (again, after legaltune: warm compile caches), unsloth, trl",
    )
    p.add_argument("--profile", default="", help="comma list of legaltune rows to sample with py-spy")
    p.add_argument("--data", help="training file instead of the preset's (eval off either way)")
    p.add_argument(
        "--max-steps",
        default="",
        help="per preset, e.g. recommended=21,h200=4 (default: the preset's epochs)",
    )
    p.add_argument("--set", action="append", help="extra --set for every row")
    p.add_argument(
        "--row-set",
        action="append",
        help="ROW:KEY=VALUE, an extra --set for one row; a row named legaltune-<anything> is a legaltune row",
    )
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "real_run"))
    p.add_argument(
        "--out", default=os.path.join(os.environ.get("OUT", "benchmarks/results"), "real_run.json")
    )
    p.add_argument("--budget-s", type=float, default=520, help="start no row after this many seconds")
    p.add_argument("--row-timeout", type=float, default=400)
    p.add_argument(
        "--init-adapter", help="dpo: the adapter to start from (made if missing; default WORK/adapter)"
    )
    p.add_argument("--make-adapter", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.presets = [s for s in args.presets.split(",") if s]
    args.rows = [s for s in args.rows.split(",") if s]
    args.profile = [s for s in args.profile.split(",") if s]
    args.max_steps = dict(kv.split("=") for kv in args.max_steps.split(",") if kv)
    args.init_adapter = args.init_adapter or os.path.join(args.work, "adapter")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.make_adapter:
        from legaltune.config.load import load_config

        make_adapter(args.model_dir, load_config(str(ROOT / PRESETS["dpo"])), args.make_adapter)
        return 0
    if not args.model_dir:
        raise SystemExit("--model-dir is required")
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
