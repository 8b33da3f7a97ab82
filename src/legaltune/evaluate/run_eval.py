"""`legaltune eval`: a run's tuned adapter against its base model on the same held-out data.

Both sides are the same loaded weights: the base is the PEFT model inside ``disable_adapter()``,
so nothing is loaded twice and the comparison cannot pick up a different checkpoint or dtype.
Loss is token-weighted (summed token losses / trained tokens over the whole eval set), so long
answers count per token, as in training; perplexity is exp(loss).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

from legaltune.data.turns import prompt_text, split_turn
from legaltune.evaluate.citations import aggregate_citation_scores, citation_scores
from legaltune.evaluate.metrics import bleu, exact_match, rouge_l, syllables, token_f1
from legaltune.run.atomic import write_json_atomic
from legaltune.run.layout import EVAL as EVAL_FILE


def _eval_config(cfg: Any, data_file: str | Path | None) -> Any:
    if data_file is None:
        return cfg  # the run's own held-out split, sampled exactly as during training
    # prepare_data always reads a train file; pointing it at the eval file (one sampled record
    # kept) means evaluating does not need the training data to be present.
    cfg.data = dataclasses.replace(
        cfg.data,
        train_file=str(data_file),
        eval_file=str(data_file),
        max_train_examples=1,
        max_eval_examples=None,
    )
    return cfg


def token_loss(
    model: Any, rows: list[dict[str, Any]], *, batch_size: int, pad_token_id: int
) -> tuple[float, int]:
    """(summed token loss / trained tokens, trained tokens) over tokenized rows (packed or not)."""
    import torch  # here, not at module level: the report imports this module's table helpers
    from torch.nn.functional import cross_entropy

    from legaltune.data.format import IGNORE
    from legaltune.data.pack import BatchCollator

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


def _generate(
    model: Any, tokenizer: Any, prompts: list[Any], gen: dict[str, Any], desc: str, show: bool, seed: int
) -> list[Any]:
    import torch
    from tqdm.auto import tqdm

    from legaltune.generate.answers import generate_answers

    torch.manual_seed(seed)  # sampled runs repeat; base and tuned draw from the same stream start
    # Longest prompts first so that each batch pads little; answers go back to question order.
    order = sorted(range(len(prompts)), key=lambda i: -sum(len(m["content"]) for m in prompts[i]))
    out: list[Any] = [None] * len(prompts)
    size = gen["batch_size"]
    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not show, dynamic_ncols=True) as bar:
        for i in range(0, len(order), size):
            idx = order[i : i + size]
            answers = generate_answers(
                model, tokenizer, [prompts[j] for j in idx], **gen, on_answer=bar.update
            )
            for j, ans in zip(idx, answers, strict=True):
                out[j] = ans
    return out


def score_answers(
    answers: list[Any],
    refs: list[str],
    *,
    verifier: Any = None,
    contexts: list[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-question rows) for answers against references.

    With a ``verifier`` (:class:`legaltune.corpus.verify.Verifier`) every citation of every answer is
    also resolved against the law corpus (``contexts``: the conversation each answer replies to, where
    a citation naming no law takes its law from): hallucinated and supported rates beside P/R/F1.
    """
    texts = [a.text for a in answers]
    per = []
    checks = []
    for i, (a, ref) in enumerate(zip(answers, refs, strict=True)):
        c = citation_scores(a.text, ref)
        ca = citation_scores(a.text, ref, level="article")
        row = {
            "answer": a.text,
            "new_tokens": a.new_tokens,
            "syllables": len(syllables(a.text)),
            "stopped": a.stopped,
            "exact_match": exact_match(a.text, ref),
            "token_f1": round(token_f1(a.text, ref), 4),
            "rouge_l": round(rouge_l(a.text, ref), 4),
            "citation_precision": c["precision"],
            "citation_recall": c["recall"],
            "citation_f1": c["f1"],
            "citation_f1_article_level": ca["f1"],
        }
        if verifier is not None:
            found = verifier.check(a.text, contexts[i] if contexts else "")
            checks.append(found)
            row["citation_checks"] = [x.to_dict() for x in found]
        per.append(row)
    cit = aggregate_citation_scores(zip(texts, refs, strict=True))
    cit_article = aggregate_citation_scores(zip(texts, refs, strict=True), level="article")
    summary = {
        "exact_match": statistics.fmean(p["exact_match"] for p in per),
        "token_f1": statistics.fmean(p["token_f1"] for p in per),
        "rouge_l": statistics.fmean(p["rouge_l"] for p in per),
        "bleu": bleu(texts, refs),
        "citation_precision": cit["precision"],
        "citation_recall": cit["recall"],
        "citation_f1": cit["f1"],
        # clause/point ignored: the right article with a wrong clause counts
        "citation_precision_article_level": cit_article["precision"],
        "citation_recall_article_level": cit_article["recall"],
        "citation_f1_article_level": cit_article["f1"],
        "mean_new_tokens": statistics.fmean(p["new_tokens"] for p in per),
        "mean_syllables": statistics.fmean(p["syllables"] for p in per),
        "stopped_rate": statistics.fmean(float(p["stopped"]) for p in per),
        "citations": cit,
        "citations_article_level": cit_article,
    }
    if verifier is not None:
        from legaltune.corpus.verify import summarize_checks

        check = summarize_checks(checks)
        summary |= {
            "hallucinated_rate": check["hallucinated_rate"],
            "hallucinated_article_rate": check["hallucinated_article_rate"],
            "supported_rate": check["supported_rate"],
            "citation_check": check,
        }
    return summary, per


_SUBSET_KEYS = (
    "citation_f1",
    "citation_precision_article_level",
    "citation_recall_article_level",
    "citation_f1_article_level",
    "hallucinated_rate",
    "supported_rate",
    "token_f1",
)


def _by_context(per: list[dict[str, Any]], refs: list[str], corpus_rows: list[int]) -> dict[str, Any]:
    """The main scores apart for questions asked with law text from the corpus (data.context_fill)
    and for those that kept their own context, from the answers already scored."""
    from legaltune.corpus.verify import CitationCheck, summarize_checks

    out = {}
    inside = set(corpus_rows)
    for name, rows in (
        ("corpus", sorted(inside)),
        ("own", [i for i in range(len(per)) if i not in inside]),
    ):
        pairs = [(per[i]["answer"], refs[i]) for i in rows]
        exact = aggregate_citation_scores(pairs)
        article = aggregate_citation_scores(pairs, level="article")
        checks = [
            [
                CitationCheck(**{k: v for k, v in c.items() if k not in ("mark", "line")})
                for c in per[i]["citation_checks"]
            ]
            for i in rows
        ]
        check = summarize_checks(checks)
        summary = {
            "questions": len(rows),
            "citation_f1": exact["f1"],
            "citation_precision_article_level": article["precision"],
            "citation_recall_article_level": article["recall"],
            "citation_f1_article_level": article["f1"],
            "hallucinated_rate": check["hallucinated_rate"],
            "supported_rate": check["supported_rate"],
            "token_f1": statistics.fmean(per[i]["token_f1"] for i in rows) if rows else None,
        }
        out[name] = {k: summary[k] for k in ("questions", *_SUBSET_KEYS)}
    return out


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
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """Loss, answers and scores of the model as it is now (adapter on, or inside disable_adapter())."""
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id or 0
    loss, tokens = (
        token_loss(model, rows, batch_size=gen["batch_size"], pad_token_id=pad) if rows else (None, 0)
    )
    t1 = time.perf_counter()
    answers = _generate(model, tokenizer, prompts, gen, f"{side} answers", show, cfg.effective_seed)
    t2 = time.perf_counter()
    summary, per = score_answers(answers, refs, verifier=verifier, contexts=[prompt_text(p) for p in prompts])
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
    from legaltune.data.prepare import prepare_data
    from legaltune.generate.load import load_run
    from legaltune.run.layout import RunError, find_adapter

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be ≥ 1 (got {limit})")
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
    cfg = _eval_config(cfg, data_file)
    prep = prepare_data(cfg, tokenizer)
    available = prep.eval_records
    if not available:
        raise ValueError(
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
    for side in sides:
        # disable_adapter() turns the LoRA layers off in place: the base on the same weights
        with model.disable_adapter() if side == "base" else contextlib.nullcontext():
            summary, per, times = _evaluate_side(
                model, tokenizer, rows, prompts, refs, gen, side, show_progress, cfg, verifier
            )
        results[side] = (summary, per)
        timing.update({f"{side}_{k}": v for k, v in times.items()})
    loss_tokens = results["tuned"][0].pop("loss_tokens")
    if compare_base:
        results["base"][0].pop("loss_tokens")
    corpus_rows = [i for i, r in enumerate(records) if r.get("context_from_corpus")]
    if corpus_rows and len(corpus_rows) < len(records):
        for side in sides:
            results[side][0]["by_context"] = _by_context(results[side][1], refs, corpus_rows)
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


# (key, label, format, which direction is better: -1 lower, +1 higher, 0 neither)
TABLE_ROWS: list[tuple[str, str, str, int]] = [
    ("loss", "eval loss (token-weighted)", "f4", -1),
    ("perplexity", "perplexity", "f2", -1),
    ("exact_match", "exact match", "pct", 1),
    ("token_f1", "token F1 (syllables)", "pct", 1),
    ("rouge_l", "ROUGE-L", "pct", 1),
    ("bleu", "BLEU", "f2", 1),
    ("citation_precision", "citation precision", "pct", 1),
    ("citation_recall", "citation recall", "pct", 1),
    ("citation_f1", "citation F1", "pct", 1),
    ("citation_precision_article_level", "citation precision (article level)", "pct", 1),
    ("citation_recall_article_level", "citation recall (article level)", "pct", 1),
    ("citation_f1_article_level", "citation F1 (article level)", "pct", 1),
    ("hallucinated_rate", "hallucinated citations (law in corpus)", "pct", -1),
    ("hallucinated_article_rate", "  … of a missing article", "pct", -1),
    ("supported_rate", "citations supported by the article", "pct", 1),
    ("mean_new_tokens", "mean answer length (tokens)", "f1", 0),
    ("mean_syllables", "mean answer length (syllables)", "f1", 0),
    ("stopped_rate", "answers that stop", "pct", 1),
]


def fmt_value(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f} %" if kind == "pct" else f"{value:.{kind[1]}f}"


def fmt_delta(base: float | None, tuned: float | None, kind: str) -> str:
    if base is None or tuned is None:
        return ""
    d = tuned - base
    return f"{100 * d:+.1f} pt" if kind == "pct" else f"{d:+.{kind[1]}f}"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    """(label, base, tuned, delta, sign) per metric; sign is +1 better, -1 worse, 0 neutral/unknown."""
    base, tuned = result.get("base") or {}, result["tuned"]
    out = []
    for key, label, kind, better in TABLE_ROWS:
        b, t = base.get(key), tuned.get(key)
        sign = 0 if (b is None or t is None or better == 0 or t == b) else (1 if (t - b) * better > 0 else -1)
        out.append((label, fmt_value(b, kind), fmt_value(t, kind), fmt_delta(b, t, kind), sign))
    return out


def render_eval(result: dict[str, Any], console: Any = None) -> None:
    """Print base vs tuned (and the change) as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    d, g = result["data"], result["generation"]
    limit = f", first {d['limit']} of {d['available']} (--limit)" if d["limit"] is not None else ""
    table = Table(
        title=f"{result['run_dir']}: {d['questions']} questions from {d['source']}{limit}",
        caption=(
            f"{'sampled' if g['do_sample'] else 'greedy'}, ≤ {g['max_new_tokens']} new tokens; "
            + (
                f"loss over {d['loss_tokens']:,} answer tokens"
                if d["loss_tokens"]
                else "no loss pass (--no-loss)"
            )
            + f"; written to {Path(result['run_dir']) / EVAL_FILE}"
        ),
    )
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("Δ", justify="right")
    for label, b, t, delta, sign in table_rows(result):
        style = {1: "green", -1: "red"}.get(sign, "")
        table.add_row(label, b, t, f"[{style}]{delta}[/{style}]" if style else delta)
    console.print(table)
    by = result["tuned"].get("by_context")
    if by:
        base_by = (result.get("base") or {}).get("by_context") or {}
        for name, label in (("corpus", "law text from the corpus"), ("own", "their own context")):
            t, b = by[name], base_by.get(name, {})
            cells = ", ".join(
                f"{lab} {fmt_value(b.get(k), 'pct')} → {fmt_value(t.get(k), 'pct')}"
                for k, lab in (
                    ("citation_f1_article_level", "article F1"),
                    ("hallucinated_rate", "hallucinated"),
                    ("supported_rate", "supported"),
                )
            )
            console.print(f"{t['questions']} questions asked with {label} (base → tuned): {cells}")
    if result.get("trainer_eval_loss") is not None:
        console.print(f"trainer's final eval loss (train_summary.json): {result['trainer_eval_loss']:.4f}")
