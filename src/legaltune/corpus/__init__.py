"""The Vietnamese law corpus: real article text to ground contexts, retrieval, and citation checks."""

from legaltune.corpus.model import Article, Clause, Corpus, Law, law_key
from legaltune.corpus.sources import build_corpus

__all__ = ["Article", "Clause", "Corpus", "Law", "build_corpus", "law_key"]
