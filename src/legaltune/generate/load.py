"""A model ready to answer: a tuned run (base + adapter, its training prompt format) or a base model.

What `legaltune generate`, `chat` and `serve` load, and what evaluation loads a run with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.errors import InputError


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
        from legaltune.data.context import ContextCounts, ContextFiller, record_citations

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
        raise InputError("give exactly one of --run RUN_DIR or --model NAME")
    return str(Path(run_dir).resolve()) if run_dir is not None else str(model_name)


def load_generator(
    run_dir: str | Path | None = None, model_name: str | None = None, *, context_fill: str | None = None
) -> Generator:
    """Load a run (base + adapter, its training prompt format) or a base model alone (defaults).

    ``context_fill`` (none / cited / retrieved) overrides the run's ``data.context_fill`` for rows
    that bring no context of their own."""
    from legaltune.config.load import load_config
    from legaltune.data.format import end_of_turn_token, load_template

    name = model_label(run_dir, model_name)
    if run_dir is not None:
        model, tokenizer, cfg = load_run(run_dir)
    else:
        from legaltune.model.load import load_model

        cfg = load_config(None)  # the defaults: legaltune's system prompt, the tokenizer's template
        cfg.model = dataclasses.replace(cfg.model, model_name=model_name)
        model, tokenizer = load_model(cfg.model, cfg.quantization)
    template = load_template(cfg.data.chat_template)
    end_of_turn = end_of_turn_token(tokenizer, template)
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


def load_run(run_dir: str | Path, base_model: str | None = None) -> tuple[Any, Any, Any]:
    """(model with the run's adapter, tokenizer, resolved config) for inference on CPU or GPU.

    ``run_dir`` is a finished run, or an adapter / checkpoint directory inside a run (see
    legaltune.run.layout.find_adapter). The tokenizer is the one training saved beside the adapter
    (the base's when there is none); ``base_model`` replaces the base weights' location.
    """
    from legaltune.config.load import load_config
    from legaltune.model.load import load_model, prepare_tokenizer
    from legaltune.run.adapter import attach_adapter, load_saved_tokenizer
    from legaltune.run.layout import RunError, find_adapter

    ref = find_adapter(run_dir)
    if ref.run is None or not ref.run.config.is_file():
        raise RunError(
            f"{ref.adapter_dir} is an adapter outside a run directory (no config.yaml beside it): "
            "pass the run directory that legaltune train wrote"
        )
    cfg = load_config(ref.run.config)
    if base_model is not None:  # the base moved (another machine, a local copy of a hub model)
        cfg.model = dataclasses.replace(cfg.model, model_name=base_model)
    base, tokenizer = load_model(cfg.model, cfg.quantization)
    if ref.tokenizer_dir is not None:
        tokenizer = load_saved_tokenizer(ref.tokenizer_dir)
        prepare_tokenizer(tokenizer, cfg.model.max_seq_length)
    return attach_adapter(base, ref.adapter_dir), tokenizer, cfg
