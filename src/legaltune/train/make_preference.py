"""`legaltune data make-preference`: preference pairs built from QA data, for DPO / ORPO.

The chosen answer is the record's own; the rejected one is made wrong on purpose, in one of two ways:

* ``corpus``: every article the answer cites, when its law is in the law corpus, is swapped for
  another article of the same law: the BM25-nearest to the question (``--pick nearest``: a
  plausible, hard negative) or a seeded random one (``--pick random``). Only the article numbers
  change, so the pair teaches which article answers the question and nothing else.
* ``invented``: every corpus-checked citation of the answer is made to name a clause its article
  does not have — a clause number past the article's last (``khoản 2 Điều 35`` → ``khoản 4 Điều
  35``), or, for an article cited without a clause, ``khoản 1`` of an article that has none
  (``Điều 114`` → ``khoản 1 Điều 114``) and one past the last otherwise. The rest of the answer is
  the record's own, so the pair teaches exactly "do not invent a clause": the hallucination the
  corpus check counts, and every one the tuned demo model made.
* ``model``: an SFT run answers every question (greedy) as it was trained (its system prompt,
  context and chat template); an answer whose citations miss the reference's articles, or name an
  article the law does not have, becomes the rejected one. Answers already right are skipped.

Records that cannot give a pair are skipped and counted by reason (no citation, law not in the
corpus, model already right, …); malformed records stop the build with ``file:line``. Each pair
keeps the record's ``id``, ``context`` and ``citation`` and says how it was made (``negative``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legaltune.data.schemas import RecordError, detect_schema, to_messages
from legaltune.errors import InputError
from legaltune.records.read import DataError, read_records


@dataclass
class BuildReport:
    records: int = 0
    pairs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)  # first locations per reason

    def skip(self, reason: str, loc: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.where.setdefault(reason, [])
        if len(self.where[reason]) < 3:
            self.where[reason].append(loc)

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "pairs": self.pairs, "skipped": self.skipped, "where": self.where}


@dataclass
class QAItem:
    loc: str
    prompt: str | list[dict[str, str]]  # the question, or the conversation before the answer
    answer: str
    context: str  # what the answer replies to (question and context), for the citation checks
    keep: dict[str, Any]  # id, context, citation


def read_qa(path: str | Path) -> list[QAItem]:
    """QA records (legal_qa, chat, alpaca) of a file; a malformed one stops with ``file:line``."""
    items = []
    for loc, rec in read_records(path):
        try:
            schema = detect_schema(rec)
            if schema not in ("legal_qa", "chat", "alpaca"):
                raise RecordError(
                    "(record)", f"schema {schema or 'unknown'}: give question/answer or messages records"
                )
            msgs = to_messages(rec, schema, use_context=True)
        except RecordError as exc:
            raise DataError(f"{loc}: {exc}") from None
        k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompt: str | list[dict[str, str]] = rec["question"] if schema == "legal_qa" else msgs[:k]
        context = "\n".join(m["content"] for m in msgs[:k] if m["role"] != "system")
        keep = {key: rec[key] for key in ("id", "context", "citation") if key in rec}
        items.append(QAItem(loc, prompt, msgs[k]["content"], context, keep))
    return items


_LAST_NUMBER = re.compile(r"\d+(?=\D*$)")


def swap_articles(answer: str, swaps: dict[int, int], positions: list[tuple[int, int, int]]) -> str:
    """``answer`` with each cited article number in ``swaps`` replaced; ``positions`` are the
    (start, end, article) spans of its citations (each ends at the article's number)."""
    out, last = [], 0
    for start, end, article in sorted(positions):
        if article not in swaps or start < last:
            continue
        span = answer[start:end]
        m = _LAST_NUMBER.search(span)
        if m is None or int(m.group()) != article:
            continue
        out.append(answer[last : start + m.start()])
        out.append(str(swaps[article]))
        last = start + m.end()
    out.append(answer[last:])
    return "".join(out)


def corpus_citations(
    verifier: Any, corpus: Any, item: QAItem, *, refuse_hallucinated: bool = False
) -> list[Any] | str:
    """The answer's citations that name an existing article of a corpus law (each negative builder
    edits those), or the reason it has none; ``refuse_hallucinated``: an answer citing something
    the law lacks has none either (its own mistake would stay in the chosen answer)."""
    checks = verifier.check(item.answer, item.context)
    if not checks:
        return "answer cites no article"
    if refuse_hallucinated and any(c.hallucinated for c in checks):
        return "the answer itself cites what the law does not have"
    usable = [c for c in checks if c.status == "ok" and c.law in corpus.laws]
    return usable or "no cited article of a law in the corpus"


class CorpusNegatives:
    """Rejected answers with each corpus-checked article swapped for another article of its law."""

    def __init__(self, corpus: Any, *, pick: str = "nearest", seed: int = 0, verifier: Any = None):
        from legaltune.corpus.search import ArticleSearch
        from legaltune.corpus.verify import Verifier

        if pick not in ("nearest", "random"):
            raise InputError(f"--pick {pick!r}: choose nearest or random")
        self.corpus = corpus
        self.verifier = verifier or Verifier(corpus)
        self.search = ArticleSearch(corpus) if pick == "nearest" else None
        self.rng = random.Random(seed)

    def _other(self, law: str, article: int, question: str) -> int | None:
        numbers = [n for n in self.corpus.laws[law].articles if n != str(article)]
        if not numbers:
            return None
        if self.search is not None:
            for hit in self.search.search(question, k=10, law=law):
                if hit.article.number != str(article):
                    return int(hit.article.number)
        return int(self.rng.choice(sorted(numbers, key=int)))

    def rejected(self, item: QAItem) -> tuple[str, dict[str, Any]] | str:
        """(rejected answer, how it was made), or the reason there is none."""
        from legaltune.text.citations import article_mentions

        usable = corpus_citations(self.verifier, self.corpus, item)
        if isinstance(usable, str):
            return usable
        question = item.prompt if isinstance(item.prompt, str) else item.context
        swaps: dict[int, int] = {}
        for c in usable:
            if c.article not in swaps:
                other = self._other(c.law, c.article, question)
                if other is not None:
                    swaps[c.article] = other
        text, mentions = article_mentions(item.answer)
        base = item.answer if len(text) == len(item.answer) else text  # positions index the normalised text
        positions = [(m.start, m.end, m.citation.article) for m in mentions if m.citation.article in swaps]
        rejected = swap_articles(base, swaps, positions)
        if rejected == base:
            return "cited article could not be swapped"
        info = {"kind": "corpus", "swapped": {str(a): b for a, b in swaps.items()}, "law": usable[0].law}
        return rejected, info


_CLAUSE_NUMBER = re.compile(r"(khoản\s+)(\d+)", re.IGNORECASE)


class InventedNegatives:
    """Rejected answers whose corpus-checked citations name a clause their article does not have."""

    def __init__(self, corpus: Any, verifier: Any = None):
        from legaltune.corpus.verify import Verifier

        self.corpus = corpus
        self.verifier = verifier or Verifier(corpus)

    def _past_last(self, numbers: Any, offset: int) -> int:
        return max((int(n) for n in numbers if str(n).isdigit()), default=0) + offset

    def rejected(self, item: QAItem) -> tuple[str, dict[str, Any]] | str:
        """(rejected answer, how it was made), or the reason there is none."""
        from legaltune.text.citations import article_mentions

        usable = corpus_citations(self.verifier, self.corpus, item, refuse_hallucinated=True)
        if isinstance(usable, str):
            return usable
        law = self.corpus.laws[usable[0].law]
        text, mentions = article_mentions(item.answer)
        base = item.answer if len(text) == len(item.answer) else text  # positions index the normalised text
        # an article also cited with a clause keeps its number: the invented clause is the mistake
        with_clause = {c.article for c in usable if c.clause is not None}
        wanted = {
            (c.article, c.clause) for c in usable if c.clause is not None or c.article not in with_clause
        }
        edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in base
        invented: dict[str, str] = {}
        seen_chains: set[tuple[int, int]] = set()
        for m in mentions:
            key = (m.citation.article, m.citation.clause)
            if key not in wanted or (m.start, m.end) in seen_chains:
                continue
            article = law.articles.get(str(m.citation.article))
            if article is None:
                continue
            span = base[m.start : m.end]
            if m.citation.clause is not None:
                # every clause of this chain past the article's last one (offset by its position)
                clauses = list(_CLAUSE_NUMBER.finditer(span))
                for i, c in enumerate(clauses):
                    new = str(self._past_last(article.clauses, 2 + i))
                    edits.append((m.start + c.start(2), m.start + c.end(2), new))
                    invented[f"khoản {c.group(2)} Điều {m.citation.article}"] = f"khoản {new}"
            else:
                # cited without a clause: give it one the article lacks — khoản 1 of an article that
                # has no clauses is the tuned model's own mistake (every hallucination of the demo run)
                number = _LAST_NUMBER.search(span)
                if number is None or int(number.group()) != m.citation.article:
                    continue
                clause = 1 if not article.clauses else self._past_last(article.clauses, 2)
                at = m.start + span.lower().rfind("điều", 0, number.start())
                if at < m.start:
                    continue
                edits.append((at, at, f"khoản {clause} "))
                invented[f"Điều {m.citation.article}"] = f"khoản {clause} Điều {m.citation.article}"
            seen_chains.add((m.start, m.end))
        if not edits:
            return "cited article could not be changed"
        out, last = [], 0
        for start, end, new in sorted(set(edits)):
            if start < last:
                continue
            out += [base[last:start], new]
            last = end
        rejected = "".join(out) + base[last:]
        if rejected == base:
            return "cited article could not be changed"
        return rejected, {"kind": "invented", "invented": invented, "law": usable[0].law}


def model_negatives(
    items: list[QAItem],
    input_path: str | Path,
    run_dir: str | Path,
    report: BuildReport,
    *,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """loc → (the SFT run's wrong answer, how it was made), for the questions it answers wrongly."""
    import dataclasses

    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier
    from legaltune.data.prepare import prepare_data
    from legaltune.data.turns import prompt_text, split_turn
    from legaltune.evaluate.citations import citation_scores
    from legaltune.generate.answers import generate_answers
    from legaltune.generate.load import load_run

    model, tokenizer, cfg = load_run(run_dir)
    # the questions exactly as the run was trained on them (system prompt, context, template)
    cfg.data = dataclasses.replace(
        cfg.data,
        train_file=str(input_path),
        eval_file=None,
        val_split=0.0,
        max_train_examples=None,
        dedup=False,
    )
    prep = prepare_data(cfg, tokenizer)
    wanted = {it.loc for it in items}
    records = [r for r in prep.train_records if r["loc"] in wanted]
    turns = [split_turn(r["messages"]) for r in records]
    answers = generate_answers(
        model,
        tokenizer,
        [t[0] for t in turns],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat_template=prep.formatter.template,
        end_of_turn=prep.formatter.end_of_turn.strip(),
    )
    verifier = Verifier(build_corpus(cfg.data.corpus_file))
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for rec, (prompt, _q, reference), answer in zip(records, turns, answers, strict=True):
        f1 = citation_scores(answer.text, reference, level="article")["f1"]
        hallucinated = [c.written for c in verifier.check(answer.text, prompt_text(prompt)) if c.hallucinated]
        if (f1 is None or f1 >= 1.0) and not hallucinated:
            report.skip("model answer already cites the reference's articles", rec["loc"])
            continue
        if answer.text.strip() == reference.strip():
            report.skip("model answer equals the reference", rec["loc"])
            continue
        info = {
            "kind": "model",
            "run": str(run_dir),
            "citation_f1_article": f1,
            "hallucinated": hallucinated,
            "stopped": answer.stopped,
        }
        out[rec["loc"]] = (answer.text, info)
    return out


def build_pairs(
    input_path: str | Path,
    *,
    negatives: str = "corpus",
    run_dir: str | Path | None = None,
    pick: str = "nearest",
    seed: int = 0,
    corpus_file: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
) -> tuple[list[dict[str, Any]], BuildReport]:
    """The pairs of ``input_path`` (module doc) and the counts of what was skipped."""
    items = read_qa(input_path)[:limit] if limit else read_qa(input_path)
    report = BuildReport(records=len(items))
    made: dict[str, tuple[str, dict[str, Any]]] = {}
    if negatives in ("corpus", "invented"):
        from legaltune.corpus import build_corpus

        corpus = build_corpus(corpus_file)
        maker = (
            CorpusNegatives(corpus, pick=pick, seed=seed)
            if negatives == "corpus"
            else InventedNegatives(corpus)
        )
        for it in items:
            result = maker.rejected(it)
            if isinstance(result, str):
                report.skip(result, it.loc)
            else:
                made[it.loc] = result
    elif negatives == "model":
        if run_dir is None:
            raise InputError(
                "--negatives model needs --run RUN (the SFT run whose wrong answers become rejected)"
            )
        made = model_negatives(
            items, input_path, run_dir, report, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
    else:
        raise InputError(f"--negatives {negatives!r}: choose corpus, invented or model")
    pairs = []
    for it in items:
        if it.loc in made:
            rejected, info = made[it.loc]
            pairs.append(
                {
                    **it.keep,
                    "prompt": it.prompt,
                    "chosen": it.answer,
                    "rejected": rejected,
                    "negative": info,
                    "source": it.loc,
                }
            )
    report.pairs = len(pairs)
    return pairs, report


def write_pairs(path: str | Path, pairs: list[dict[str, Any]]) -> Path:
    """JSONL, written whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def cmd_make_preference(args: Any) -> int:
    """The CLI action (arguments as ``legaltune data make-preference`` parses them)."""
    if not args.input or not args.output:
        raise InputError("make-preference needs --input QA.jsonl and --output PAIRS.jsonl")
    pairs, report = build_pairs(
        args.input,
        negatives=args.negatives,
        run_dir=args.run,
        pick=args.pick,
        seed=args.seed,
        corpus_file=args.corpus_file,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    if not pairs:
        raise DataError(
            f"{args.input}: no pair could be made ({json.dumps(report.skipped, ensure_ascii=False)})"
        )
    write_pairs(args.output, pairs)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
        return 0
    print(f"{report.pairs} pairs from {report.records} records → {args.output}")
    for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n}: {reason} (e.g. {', '.join(report.where[reason])})")
    return 0
