"""`legaltune corpus …`: list the laws, show an article, search, measure recall, check data, calibrate."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legaltune.corpus.model import Article, Corpus
from legaltune.corpus.sources import build_corpus
from legaltune.errors import InputError

BUNDLED = ["data/vi_legal_qa/train.jsonl", "data/vi_legal_qa/eval.jsonl"]


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def _laws(corpus: Corpus, console: Console, as_json: bool) -> int:
    rows = [
        {"law": law.key, "name": law.name, "articles": len(law.articles), "source": law.source}
        for law in corpus.laws.values()
    ]
    if as_json:
        _print_json({"laws": rows, "articles": len(corpus), "replaced": corpus.replaced})
        return 0
    t = Table(title=f"law corpus: {len(corpus.laws)} laws, {len(corpus):,} articles")
    for col in ("law", "name", "articles", "source"):
        t.add_column(col, justify="right" if col == "articles" else "left")
    for r in rows:
        t.add_row(r["law"], r["name"], str(r["articles"]), r["source"])
    console.print(t)
    for note in corpus.replaced:
        console.print(f"replaced: {escape(note)}")
    return 0


def _article_dict(article: Article, corpus: Corpus) -> dict[str, Any]:
    return {
        "law": article.law,
        "law_name": corpus.laws[article.law].name,
        "article": article.number,
        "title": article.title,
        "path": list(article.path),
        "text": article.text,
        "clauses": {k: {"text": c.text, "points": c.points} for k, c in article.clauses.items()},
    }


def _find_article(corpus: Corpus, law_query: str, number: str) -> Article:
    law = corpus.find_law(law_query)
    if law is None:
        known = "; ".join(f"{x.key} {x.name}" for x in corpus.laws.values())
        raise InputError(f"law {law_query!r} is not in the corpus; known laws: {known}")
    article = law.articles.get(number.strip())
    if article is None:
        numbers = [int(n) for n in law.articles if n.isdigit()]
        span = f"Điều {min(numbers)}–{max(numbers)}" if numbers else f"{len(law.articles)} articles"
        raise InputError(f"{law.label} has no Điều {number} (it has {span})")
    return article


def _show(corpus: Corpus, args: Any, console: Console) -> int:
    article = _find_article(corpus, args.law, args.article)
    if args.clause is not None:
        text = article.unit_text(args.clause, args.point)
        if text is None:
            unit = f"điểm {args.point} khoản {args.clause}" if args.point else f"khoản {args.clause}"
            raise InputError(f"{unit} is not in Điều {article.number} of {corpus.laws[article.law].label}")
    if args.json:
        data = _article_dict(article, corpus)
        if args.clause is not None:
            data["unit"] = {"clause": args.clause, "point": args.point, "text": text}
        _print_json(data)
        return 0
    law = corpus.laws[article.law]
    if article.path:
        console.print(f"[dim]{escape(' › '.join(article.path))}[/dim]")
    console.print(f"[bold]{escape(article.heading)}[/bold]  ({escape(law.label)})")
    console.print(escape(text if args.clause is not None else article.text))
    return 0


def _article_search(corpus: Corpus, args: Any) -> Any:
    from legaltune.corpus.search import EXPANSION_WEIGHT, TITLE_WEIGHT, ArticleSearch

    weight = TITLE_WEIGHT if args.title_weight is None else args.title_weight
    expansion = EXPANSION_WEIGHT if args.expansion_weight is None else args.expansion_weight
    return ArticleSearch(
        corpus, title_weight=weight, detect_law=not args.no_detect_law, expansion_weight=expansion
    )


def _search(corpus: Corpus, args: Any, console: Console) -> int:
    search = _article_search(corpus, args)
    hits = search.search(args.query, args.k, law=args.law)
    scoped = search.scope(args.query, args.law)
    if args.json:
        _print_json(
            [{"rank": h.rank, "score": round(h.score, 4), **_article_dict(h.article, corpus)} for h in hits]
        )
        return 0
    if scoped is not None and args.law is None:
        console.print(
            f"[dim]searched within {escape(corpus.laws[scoped].label)}, the law the question names[/dim]"
        )
    added = [t for t in search.expand(args.query) if "_" not in t]
    if added:
        console.print(f"[dim]expanded with the thesaurus: {escape(' '.join(added))}[/dim]")
    if not hits:
        console.print("no article shares a term with the query")
    for h in hits:
        law = corpus.laws[h.article.law]
        snippet = " ".join(h.article.text.split())[:200]
        console.print(
            f"[bold]{h.rank}.[/bold] {escape(h.article.heading)} — {escape(law.label)}  [dim](BM25 {h.score:.2f})[/dim]"
        )
        console.print(f"   {escape(snippet)}…")
    return 0


def _recall(corpus: Corpus, args: Any, console: Console) -> int:
    from legaltune.evaluate.retrieval import measure_recall

    result = measure_recall(
        args.data or BUNDLED, _article_search(corpus, args), args.k, scope_to_law=args.scope_law
    )
    if args.json:
        _print_json(result.to_dict())
        return 0
    scope = "within the cited law" if args.scope_law else "over the whole corpus"
    console.print(
        f"{result.questions} questions whose cited article is in the corpus ({result.skipped} records "
        f"without one not measured); BM25 {scope}:"
    )

    def rates(r: Any) -> str:
        return ", ".join(f"recall@{k} {100 * (r.rate(k) or 0):.1f} %" for k in r.ks)

    console.print(f"  all: {rates(result)}")
    if len(result.by_file) > 1:
        for path, part in result.by_file.items():
            console.print(f"  {escape(path)} ({part.questions} questions): {rates(part)}")
    return 0


def _check(corpus: Corpus, args: Any, console: Console) -> int:
    from legaltune.data.citation_audit import audit_files

    audit = audit_files(args.data or BUNDLED, corpus)
    if args.json:
        _print_json(audit.to_dict())
        return 0 if not audit.problems else 1
    a = audit.answers
    console.print(
        f"{audit.records} records, {audit.with_citation} with a citation field, {audit.in_corpus_law} of a law in the "
        f"corpus: article exists {audit.article_exists}/{audit.in_corpus_law}, article + clause + point exist "
        f"{audit.unit_exists}/{audit.in_corpus_law}"
    )
    for p in audit.problems:
        console.print(f"  [yellow]{escape(p)}[/yellow]")
    if a.get("checked"):
        console.print(
            f"their answers: {a['citations']} citations, {a['checked']} checked, hallucinated "
            f"{100 * a['hallucinated_rate']:.1f} % (article level {100 * a['hallucinated_article_rate']:.1f} %), "
            f"supported {100 * a['supported_rate']:.1f} %; by status {a['by_status']}"
        )
    return 0 if not audit.problems else 1


def _calibrate(corpus: Corpus, args: Any, console: Console) -> int:
    from legaltune.corpus.support import SUPPORT_THRESHOLD
    from legaltune.evaluate.support_calibration import calibrate

    result = calibrate(args.data or BUNDLED, corpus).to_dict()
    if args.json:
        _print_json(result)
        return 0
    console.print(
        f"{result['scored']} answers scored against their cited article ({result['records']} records cite one in "
        f"the corpus); AUC vs a random article of the law {result['auc_random']:.3f}, vs the nearest article "
        f"{result['auc_hard']:.3f}"
    )
    t = Table()
    for col in ("threshold", "supported (cited article)", "false: random article", "false: nearest article"):
        t.add_column(col, justify="right")
    for r in result["table"]:
        mark = " ←" if r["threshold"] == result["threshold"] else ""
        t.add_row(
            f"{r['threshold']:.2f}{mark}",
            f"{100 * r['tpr']:.1f} %",
            f"{100 * r['fpr_random']:.1f} %",
            f"{100 * r['fpr_hard']:.1f} %",
        )
    console.print(t)
    console.print(
        f"best threshold (Youden's J over both negatives): {result['threshold']:.2f}; in use: {SUPPORT_THRESHOLD:.2f}"
    )
    return 0


ACTIONS = {
    "laws": _laws,
    "show": _show,
    "search": _search,
    "recall": _recall,
    "check": _check,
    "calibrate": _calibrate,
}


def run_corpus_command(args: Any, console: Console | None = None) -> int:
    console = console or Console()
    corpus = build_corpus(args.corpus_file)
    if args.action == "laws":
        return _laws(corpus, console, args.json)
    return ACTIONS[args.action](corpus, args, console)
