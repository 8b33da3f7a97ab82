"""Questions for GRPO: the SFT data's conversations cut before their last answer.

The training file is read and checked exactly as for SFT (:func:`legaltune.data.prepare.prepare_data`);
each conversation becomes a prompt (everything before its last assistant turn, system prompt and
context included) and a reference (that turn), which the citation reward scores sampled answers
against. ``context`` is the text the answer replies to, where the citation checks look for the law
of a citation that names none. A prompt that leaves less than ``grpo.max_completion_length`` tokens
of ``model.max_seq_length`` is dropped and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from legaltune.config.schema import Config
from legaltune.data.format import ChatFormatter
from legaltune.data.prepare import DataStats, PreparedData, prepare_data
from legaltune.data.turns import prompt_text, split_turn
from legaltune.records.read import DataError
from legaltune.text.citations import extract_citations


@dataclass
class PromptStats:
    prompts: int = 0
    dropped_prompt_too_long: int = 0
    references_without_citation: int = 0  # the citation reward has nothing to compare with
    longest_prompt: int = 0


@dataclass
class GrpoStats:
    sft: DataStats
    train: PromptStats
    eval: PromptStats

    def to_dict(self) -> dict[str, Any]:
        return {**self.sft.to_dict(), "prompts": {"train": asdict(self.train), "eval": asdict(self.eval)}}


@dataclass
class PreparedPrompts:
    """Rows of ``prompt`` (messages), ``reference`` (the answer) and ``context`` (prompt text)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: GrpoStats
    max_completion_length: int
    sft: PreparedData = field(repr=False)
    prompt_tokens: list[int] = field(default_factory=list)  # per training prompt

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        return self.sft.eval_records

    @property
    def formatter(self) -> ChatFormatter:
        return self.sft.formatter

    def lengths(self) -> list[int]:
        """Tokens of each training sequence at its longest (prompt + max_completion_length)."""
        return [n + self.max_completion_length for n in self.prompt_tokens]


def _prompts(
    records: list[dict[str, Any]], fmt: ChatFormatter, room: int, stats: PromptStats
) -> tuple[list[dict[str, Any]], list[int]]:
    rows, sizes = [], []
    for rec in records:
        prompt, _question, reference = split_turn(rec["messages"])
        n = len(
            fmt.tok(fmt.render(prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        )
        if n > room:
            stats.dropped_prompt_too_long += 1
            continue
        stats.prompts += 1
        stats.longest_prompt = max(stats.longest_prompt, n)
        stats.references_without_citation += not any(
            c.kind == "article" for c in extract_citations(reference)
        )
        rows.append({"prompt": prompt, "reference": reference, "context": prompt_text(prompt)})
        sizes.append(n)
    return rows, sizes


def prepare_prompts(cfg: Config, tokenizer: Any) -> PreparedPrompts:
    """The GRPO questions of ``data.train_file`` / ``data.eval_file`` (see module doc)."""
    sft = prepare_data(cfg, tokenizer)
    room = cfg.model.max_seq_length - cfg.grpo.max_completion_length
    tr, ev = PromptStats(), PromptStats()
    train, sizes = _prompts(sft.train_records, sft.formatter, room, tr)
    evals, _ = _prompts(sft.eval_records, sft.formatter, room, ev)
    if not train:
        raise DataError(
            f"{cfg.data.train_file}: every prompt is longer than model.max_seq_length − grpo.max_completion_length "
            f"= {room} tokens ({tr.dropped_prompt_too_long} dropped); raise max_seq_length or lower "
            "max_completion_length"
        )
    return PreparedPrompts(
        train, evals, GrpoStats(sft.stats, tr, ev), cfg.grpo.max_completion_length, sft, sizes
    )
