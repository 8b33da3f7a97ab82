"""`legaltune generate`: answer a JSONL file of questions with a tuned run or a base model.

Resumable by construction: the output file is only ever appended to. On start, complete output
lines are matched to input rows (by ``id`` when the input row has one, else by the 1-based input
line number stored as ``input_line``), and only unanswered rows are generated. A last line left
half-written by a crash (no trailing newline) is cut off before appending, so it cannot merge
with the next row; complete lines are never touched.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from legaltune.data.turns import prompt_text
from legaltune.errors import InputError
from legaltune.generate.load import Generator, load_generator, model_label
from legaltune.generate.rows import Key, check_row, read_input, row_key, row_messages
from legaltune.records.read import DataError


def _done_keys(path: Path, model_name: str) -> set[Key]:
    """Keys of rows already answered; cuts off a half-written last line (the only write ever undone)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        print(
            f"{path}: dropping a half-written last line ({len(data) - complete} bytes) before resuming",
            file=sys.stderr,
        )
        with path.open("r+b") as fh:
            fh.truncate(complete)
    done: set[Key] = set()
    for n, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(
                f"{path}:{n}: unreadable line left as is; its question will be answered again",
                file=sys.stderr,
            )
            continue
        if row.get("model") not in (None, model_name):
            raise InputError(
                f"{path}:{n} was written by {row['model']!r}, not {model_name!r}; "
                "write to another --output rather than mixing two models' answers"
            )
        if row.get("id") is not None:
            done.add(("id", row["id"]))
        elif isinstance(row.get("input_line"), int):
            done.add(("line", row["input_line"]))
    return done


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def generate_file(
    input_jsonl: str | Path,
    output_jsonl: str | Path,
    *,
    run_dir: str | Path | None = None,
    model_name: str | None = None,
    generator: Generator | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    show_progress: bool = True,
    verify: bool = True,
    context_fill: str | None = None,
) -> dict[str, Any]:
    """Answer every row of ``input_jsonl`` not yet in ``output_jsonl``, appending one row per answer.

    Each output row is the input row plus ``answer``, ``stopped``, ``new_tokens``, ``model`` and
    ``input_line`` (an input ``answer``, e.g. an eval file's gold answer, moves to ``reference``);
    with ``verify``, ``citations``: each citation of the answer checked against the law corpus
    (mark ✓/✗/?, law, article title, status, support; see legaltune.corpus.verify).
    Returns counts: total, skipped (already answered), generated, and ``citation_check`` (the
    rates over this call's answers) when verifying.
    """
    from tqdm.auto import tqdm

    # here, not at module level: a bad input row is reported without importing torch
    from legaltune.generate.answers import generate_answers

    src, dst = Path(input_jsonl), Path(output_jsonl)
    rows = read_input(src)
    keys = [row_key(n, r) for n, r in rows]
    dupes = sorted(str(k[1]) for k, c in Counter(keys).items() if c > 1)
    if dupes:
        # Resuming matches rows by id; two rows sharing one would be answered once.
        raise DataError(f"{src}: duplicate ids {', '.join(dupes[:5])}; ids must be unique")
    done = _done_keys(dst, generator.name if generator else model_label(run_dir, model_name))
    pending = [(n, r) for (n, r), k in zip(rows, keys, strict=True) if k not in done]
    if not pending:  # a finished file: answer at once, without loading the model
        return {"total": len(rows), "skipped": len(rows), "generated": 0, "output": str(dst)}
    for n, r in pending:  # every row checked before the model loads: a bad row costs seconds, not a load
        check_row(r, f"{src}:{n}: ")
    gen = generator or load_generator(run_dir, model_name, context_fill=context_fill)
    convs = [row_messages(r, gen, f"{src}:{n}: ") for n, r in pending]  # all checked before generating
    dst.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(pending), desc="generating", unit="q", disable=not show_progress, dynamic_ncols=True)
    checks: list[Any] = []
    with dst.open("a", encoding="utf-8") as out:
        for batch in _chunks(list(zip(pending, convs, strict=True)), batch_size):
            answers = generate_answers(
                gen.model,
                gen.tokenizer,
                [c for _, c in batch],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                chat_template=gen.template,
                end_of_turn=gen.end_of_turn,
            )
            for ((n, row), conv), ans in zip(batch, answers, strict=True):
                rec = dict(row)
                if "answer" in rec and "reference" not in rec:
                    rec["reference"] = rec.pop(
                        "answer"
                    )  # an eval file's gold answer is kept, not overwritten
                rec.update(
                    answer=ans.text,
                    stopped=ans.stopped,
                    new_tokens=ans.new_tokens,
                    model=gen.name,
                    input_line=n,
                )
                if verify:
                    found = gen.verifier().check(ans.text, prompt_text(conv))
                    checks.append(found)
                    rec["citations"] = [c.to_dict() for c in found]
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line: whole or cut
            out.flush()
            os.fsync(out.fileno())  # a crash loses at most the batch being generated
            bar.update(len(batch))
    bar.close()
    done_counts: dict[str, Any] = {
        "total": len(rows),
        "skipped": len(rows) - len(pending),
        "generated": len(pending),
        "output": str(dst),
    }
    if verify:
        from legaltune.corpus.verify import summarize_checks

        done_counts["citation_check"] = summarize_checks(checks)
    return done_counts
