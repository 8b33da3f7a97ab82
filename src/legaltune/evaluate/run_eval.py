"""`legaltune eval`: a run's tuned adapter against its base model on the same held-out data.

Both sides are the same loaded weights: the base is the PEFT model inside ``disable_adapter()``,
so nothing is loaded twice and the comparison cannot pick up a different checkpoint or dtype.
Loss is token-weighted (summed token losses / trained tokens over the whole eval set), so long
answers count per token, as in training; perplexity is exp(loss).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cross_entropy

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator
from legaltune.data.turns import prompt_text, split_turn
from legaltune.errors import InputError
from legaltune.evaluate.score import score_answers
from legaltune.generate.answers import answer_longest_first
from legaltune.run.atomic import write_json_atomic
from legaltune.run.layout import EVAL as EVAL_FILE


def token_loss(
    model: Any, rows: list[dict[str, Any]], *, batch_size: int, pad_token_id: int
) -> tuple[float, int]:
    """(summed token loss / trained tokens, trained tokens) over tokenized rows (packed or not)."""
    collate = BatchCollator(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            labels = batch.pop("labels").to(device)
            # use_cache=False: a KV cache would hide the position resets that separate packed examples
            logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
            for r in range(logits.shape[0]):  # one row at a time: an fp32 copy of all logits can be GBs
                target = labels[r, 1:]
                keep = target != IGNORE
                total += cross_entropy(logits[r, :-1][keep].float(), target[keep], reduction="sum").item()
                count += int(keep.sum())
    return total / count, count


def _perplexity(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None  # exp overflows a double past ~709; JSON has no inf


def _loss_rows(prep: Any, records: list[dict[str, Any]], cfg: Any, limited: bool) -> list[dict[str, Any]]:
    if not limited:
        return prep.eval  # every eval example, as training evaluated it (packed rows included)
    rows = []
    for rec in records:  # the first N conversations only, so loss and generation see the same data
        enc = prep.formatter.encode(rec["messages"], cfg.model.max_seq_length, cfg.data.overlength)
        if enc is not None and enc.trained:
            rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return rows


def _evaluate_side(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    prompts: list[Any],
    refs: list[str],
    gen: dict[str, Any],
    side: str,
    show: bool,
    cfg: Any,
    verifier: Any = None,
    corpus_rows: list[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """Loss, answers and scores of the model as it is now (adapter on, or inside disable_adapter())."""
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id or 0
    loss, tokens = (
        token_loss(model, rows, batch_size=gen["batch_size"], pad_token_id=pad) if rows else (None, 0)
    )
    t1 = time.perf_counter()
    answers = answer_longest_first(
        model, tokenizer, prompts, gen, desc=f"{side} answers", show=show, seed=cfg.effective_seed
    )
    t2 = time.perf_counter()
    contexts = [prompt_text(p) for p in prompts]
    summary, per = score_answers(answers, refs, verifier=verifier, contexts=contexts, corpus_rows=corpus_rows)
    summary |= {
        "loss": loss,
        "perplexity": _perplexity(loss) if loss is not None else None,
        "loss_tokens": tokens,
    }
    new_tokens = sum(a.new_tokens for a in answers)
    times = {
        "loss_s": round(t1 - t0, 2),
        "generation_s": round(t2 - t1, 2),
        "new_tokens_per_s": round(new_tokens / (t2 - t1), 1) if t2 > t1 else 0.0,
    }
    return summary, per, times


def evaluate_run(
    run_dir: str | Path,
    *,
    data_file: str | Path | None = None,
    limit: int | None = None,
    base_model: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    compare_base: bool = True,
    compute_loss: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate RUN_DIR's adapter (and its base) on held-out data; write RUN_DIR/eval.json and return it."""
    from legaltune.data.prepare import prepare_data, prepare_eval_data
    from legaltune.generate.load import load_run
    from legaltune.run.layout import RunError, find_adapter

    if limit is not None and limit < 1:
        raise InputError(f"--limit must be ≥ 1 (got {limit})")
    ref = find_adapter(run_dir)
    if ref.run is None or ref.adapter_dir != ref.run.adapter:
        raise RunError(
            f"{run_dir}: eval compares a run's final adapter with its base and writes RUN/{EVAL_FILE}; pass "
            "the run directory (for a checkpoint or partial adapter, merge it or use generate --run)"
        )
    run = ref.run
    run_dir = run.path
    model, tokenizer, cfg = load_run(run_dir, base_model)
    model.eval()
    # --data: that file alone; else the run's own held-out split, sampled exactly as during training
    prep = (
        prepare_eval_data(cfg, tokenizer, data_file)
        if data_file is not None
        else prepare_data(cfg, tokenizer)
    )
    available = prep.eval_records
    if not available:
        raise InputError(
            f"{run_dir}: the run has no evaluation conversations (data.eval_file / val_split); "
            "pass --data FILE"
        )
    records = available[:limit] if limit is not None else available
    # without the loss pass (--no-loss) only generation is scored: on a CPU the pass over long
    # contexts can take longer than the answers
    rows = _loss_rows(prep, records, cfg, limit is not None) if compute_loss else []
    turns = [split_turn(r["messages"]) for r in records]
    prompts, refs = [t[0] for t in turns], [t[2] for t in turns]
    gen = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_p": top_p,
        "chat_template": prep.formatter.template,
        "end_of_turn": prep.formatter.end_of_turn.strip(),
    }
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier

    corpus = build_corpus(cfg.data.corpus_file)
    verifier = Verifier(corpus)
    sides = ("tuned", "base") if compare_base else ("tuned",)
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    corpus_rows = [i for i, r in enumerate(records) if r.get("context_from_corpus")]
    for side in sides:
        # disable_adapter() turns the LoRA layers off in place: the base on the same weights
        with model.disable_adapter() if side == "base" else contextlib.nullcontext():
            summary, per, times = _evaluate_side(
                model, tokenizer, rows, prompts, refs, gen, side, show_progress, cfg, verifier, corpus_rows
            )
        results[side] = (summary, per)
        timing.update({f"{side}_{k}": v for k, v in times.items()})
    loss_tokens = results["tuned"][0].pop("loss_tokens")
    if compare_base:
        results["base"][0].pop("loss_tokens")
    questions = []
    for i, (rec, (_, question, ref)) in enumerate(zip(records, turns, strict=True)):
        row = {"id": rec.get("id"), "loc": rec["loc"], "question": question, "reference": ref}
        if rec.get("context_from_corpus"):
            row["context_from_corpus"] = True
        for side in sides:
            row[side] = results[side][1][i]
        questions.append(row)
    trainer_loss = None
    if data_file is None and limit is None:
        # Same rows as the trainer's final evaluation: a consistency check on the loss (the trainer
        # averages per batch, so a small difference is expected when batches differ in tokens).
        trainer_loss = (run.read_summary() or {}).get("eval_loss_after")
    result = {
        "run_dir": str(run_dir),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_model": cfg.model.model_name,
        "data": {
            "source": str(data_file)
            if data_file
            else (cfg.data.eval_file or f"val_split of {cfg.data.train_file}"),
            "available": len(available),
            "limit": limit,
            "questions": len(records),
            "loss_rows": len(rows),
            "loss_tokens": loss_tokens,
            "multi_turn": sum(1 for p in prompts if sum(m["role"] == "user" for m in p) > 1),
        },
        "generation": {k: v for k, v in gen.items() if k not in ("chat_template",)},
        "corpus": {
            "laws": len(corpus.laws),
            "articles": len(corpus),
            "corpus_file": cfg.data.corpus_file,
            "context_fill": cfg.data.context_fill,
            "support_threshold": verifier.scorer.threshold,
        },
        "tuned": results["tuned"][0],
        "base": results["base"][0] if compare_base else None,
        "trainer_eval_loss": trainer_loss,
        "timing_s": timing,
        "questions": questions,
    }
    write_json_atomic(run.eval, result, "eval results")
    return result
