"""`make demo`: fine-tune the embedded model on the bundled sample, show the loss drop and an answer."""

from __future__ import annotations

import time

from rich.console import Console

from legaltune.config.schema import Config


def run_demo(cfg: Config, console: Console | None = None) -> int:
    from legaltune.generate import generate_answers
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
    before, after = result.eval_loss_before, result.eval_loss_after
    if before is not None and after is not None:
        verdict = "[green]lower[/green]" if after < before else "[bold red]NOT lower[/bold red]"
        console.print(f"eval loss before {before:.4f} → after {after:.4f} ({verdict})")

    # One held-out question: the shortest legal QA record, so the CPU answers it in seconds.
    candidates = [r for r in result.data.eval_records if len(r["messages"]) == 3]
    if candidates:
        rec = min(candidates, key=lambda r: len(r["messages"][1]["content"]))
        question = rec["messages"][:2]
        reference = rec["messages"][2]["content"]
        model = result.trainer_model
        (answer,) = generate_answers(
            model,
            result.tokenizer,
            [question],
            max_new_tokens=160,
            chat_template=result.data.formatter.template,
            end_of_turn=result.data.formatter.end_of_turn,
        )
        console.print(f"\n[bold]question[/bold] ({rec['loc']}):\n{question[1]['content']}")
        console.print(f"\n[bold]reference[/bold]:\n{reference}")
        console.print(
            f"\n[bold]tuned model[/bold] (greedy, {answer.new_tokens} tokens, stopped: {answer.stopped}):\n{answer.text}"
        )
    console.print(
        "\n(A 135M-parameter model after a few CPU steps learns the data's form — the loss drops — but not fluent "
        "Vietnamese law; run configs/llama31-8b-recommended.yaml on a GPU for a useful assistant.)"
    )
    console.print(
        f"\nrun directory: {result.run_dir}  (adapter/, config.yaml, data_stats.json, metrics.jsonl, report.html, tensorboard/)"
    )
    return 0 if (before is None or after is None or after < before) else 1
