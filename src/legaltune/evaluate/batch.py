"""`legaltune generate`: answer a JSONL file of questions with a tuned run or a base model.

Resumable by construction: the output file is only ever appended to. On start, complete output
lines are matched to input rows (by ``id`` when the input row has one, else by the 1-based input
line number stored as ``input_line``), and only unanswered rows are generated. A last line left
half-written by a crash (no trailing newline) is cut off before appending, so it cannot merge
with the next row; complete lines are never touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.data import vietnamese as vn
from legaltune.data.schemas import user_prompt
from legaltune.evaluate.run_eval import prompt_text

_Key = tuple[str, Any]


@dataclass
class Generator:
    """A model ready to answer, with the prompt format it was trained with."""

    model: Any
    tokenizer: Any
    name: str  # written into every output row's `model`
    template: str | None  # chat template text; None = the tokenizer's own
    end_of_turn: str | None
    system_prompt: str | None
    use_context: bool = True
    nfc: bool = True
    tone_style: str | None = None
    context_fill: str = "none"  # a row without a context gets one from the law corpus (cited / retrieved)
    context_top_k: int = 3
    context_max_chars: int | None = None
    corpus_file: str | None = None
    _filler: Any = None
    _verifier: Any = None

    def corpus_context(self, row: dict[str, Any]) -> str | None:
        """Context from the law corpus for a row that brings none: the article its citation names
        (context_fill cited), else the best BM25 articles for its question, as in training."""
        if self.context_fill == "none":
            return None
        from legaltune.corpus import build_corpus
        from legaltune.corpus.context import ContextCounts, ContextFiller, record_citations

        if self._filler is None:
            self._filler = ContextFiller(
                build_corpus(self.corpus_file),
                self.context_fill,
                top_k=self.context_top_k,
                max_chars=self.context_max_chars,
            )
        cited = record_citations(row)
        # a new question rarely names its article: what cannot be looked up is retrieved
        known = bool(cited) and all(self._filler.corpus.article(*c) for c in cited)
        mode = "cited" if self.context_fill == "cited" and known else "retrieved"
        return self._filler.context_for(row["question"], cited, ContextCounts(mode), "", mode=mode)

    def verifier(self) -> Any:
        """Citation checks against the law corpus (built on first use)."""
        if self._verifier is None:
            from legaltune.corpus import build_corpus
            from legaltune.corpus.verify import Verifier

            corpus = self._filler.corpus if self._filler is not None else build_corpus(self.corpus_file)
            self._verifier = Verifier(corpus)
        return self._verifier


def model_label(run_dir: str | Path | None = None, model_name: str | None = None) -> str:
    """What output rows record as ``model``: the run's absolute path, or the base model's name."""
    if (run_dir is None) == (model_name is None):
        raise ValueError("give exactly one of --run RUN_DIR or --model NAME")
    return str(Path(run_dir).resolve()) if run_dir is not None else str(model_name)


def load_generator(
    run_dir: str | Path | None = None, model_name: str | None = None, *, context_fill: str | None = None
) -> Generator:
    """Load a run (base + adapter, its training prompt format) or a base model alone (defaults).

    ``context_fill`` (none / cited / retrieved) overrides the run's ``data.context_fill`` for rows
    that bring no context of their own."""
    from legaltune.config.load import load_config
    from legaltune.data.format import ChatFormatter, TemplateError, load_template

    name = model_label(run_dir, model_name)
    if run_dir is not None:
        from legaltune.generate import load_run

        model, tokenizer, cfg = load_run(run_dir)
    else:
        from legaltune.model.load import load_model

        cfg = load_config(None)  # the defaults: legaltune's system prompt, the tokenizer's template
        cfg.model = dataclasses.replace(cfg.model, model_name=model_name)
        model, tokenizer = load_model(cfg.model, cfg.quantization)
    template = load_template(cfg.data.chat_template)
    try:
        end_of_turn: str | None = ChatFormatter(tokenizer, template=template).end_of_turn.strip()
    except TemplateError:
        # A base model whose template does not close turns can still answer; it stops at eos only.
        end_of_turn = None
    return Generator(
        model.eval(),
        tokenizer,
        name,
        template,
        end_of_turn,
        cfg.data.system_prompt,
        cfg.data.use_context,
        cfg.data.nfc,
        cfg.data.tone_style,
        context_fill if context_fill is not None else cfg.data.context_fill,
        cfg.data.context_top_k,
        cfg.data.context_max_chars,
        cfg.data.corpus_file,
    )


def _clean(text: str, gen: Generator) -> str:
    # The same hygiene as training (NFC, tone style), so that NFD input tokenizes as the model saw it.
    return vn.clean(text, nfc=gen.nfc, tone_style=gen.tone_style)  # type: ignore[arg-type]


def row_messages(row: dict[str, Any], gen: Generator, where: str = "") -> list[dict[str, str]]:
    """Conversation to answer for an input row: ``messages`` (a trailing assistant turn is dropped),
    or ``question`` with an optional ``context``, formatted as in training; system prompt prepended."""
    check_row(row, where)
    if "messages" in row:
        msgs = [
            {"role": m.get("role", ""), "content": _clean(str(m.get("content", "")), gen)}
            for m in row["messages"]
        ]
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]  # a reference answer: the model answers the user turn before it
    else:
        context = row.get("context") if gen.use_context else None
        if gen.use_context and not (isinstance(context, str) and context.strip()):
            context = gen.corpus_context(row)
        text = user_prompt(row["question"], context if isinstance(context, str) else "")
        msgs = [{"role": "user", "content": _clean(text, gen)}]
    if gen.system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": gen.system_prompt}, *msgs]
    return msgs


def read_input(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, row) for each non-blank line of a JSONL file (UTF-8/16 with or without BOM)."""
    from legaltune.data.sources import read_jsonl

    return read_jsonl(path)


def check_row(row: dict[str, Any], where: str = "") -> None:
    """What :func:`row_messages` needs of a row, checked without a model (before one is loaded)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ValueError(f"{where}field 'messages' must be a list of {{role, content}}")
        roles = [m.get("role") for m in msgs]
        while roles and roles[-1] == "assistant":
            roles.pop()
        if not roles or roles[-1] != "user":
            raise ValueError(f"{where}'messages' must end with a user turn")
    elif not (isinstance(row.get("question"), str) and row["question"].strip()):
        raise ValueError(f"{where}a row needs a non-empty 'question' (+ optional 'context') or 'messages'")


def row_key(line: int, row: dict[str, Any]) -> _Key:
    return ("id", row["id"]) if row.get("id") is not None else ("line", line)


def _done_keys(path: Path, model_name: str) -> set[_Key]:
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
    done: set[_Key] = set()
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
            raise ValueError(
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

    from legaltune.generate import generate_answers

    src, dst = Path(input_jsonl), Path(output_jsonl)
    rows = read_input(src)
    keys = [row_key(n, r) for n, r in rows]
    dupes = sorted(str(k[1]) for k, c in Counter(keys).items() if c > 1)
    if dupes:
        # Resuming matches rows by id; two rows sharing one would be answered once.
        raise ValueError(f"{src}: duplicate ids {', '.join(dupes[:5])}; ids must be unique")
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
