"""Preference pairs (prompt, chosen, rejected) for DPO / ORPO: read, validated, tokenized, counted.

The files go through the same reader and checks as SFT data (:func:`legaltune.data.prepare.prepare_data`:
``file:line`` errors, hygiene, system prompt, context from the corpus, duplicates, seeded samples),
where a pair's prompt and chosen answer make its conversation. Each pair is then rendered with the
run's chat template twice, ending in the chosen and in the rejected answer, and split into prompt
tokens and answer tokens: the answer runs to its end-of-turn token included, as SFT trains it. Pairs
longer than ``model.max_seq_length`` are cut in their answers or dropped (``data.overlength``), and a
prompt that alone fills the length drops its pair; every case is counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from legaltune.config.schema import Config
from legaltune.data.format import ChatFormatter
from legaltune.data.prepare import DataStats, PreparedData, prepare_data
from legaltune.records.read import DataError


@dataclass
class PairStats:
    pairs: int = 0  # kept
    not_pairs: int = 0  # records without a rejected answer (a preference file mixed with SFT records)
    truncated: int = 0  # pairs with an answer cut at max_seq_length
    dropped_overlength: int = 0  # data.overlength drop
    dropped_prompt_too_long: int = 0  # the prompt alone fills max_seq_length
    prompt_tokens: int = 0
    chosen_tokens: int = 0
    rejected_tokens: int = 0
    longest: int = 0  # tokens of the longest sequence (prompt + answer)


@dataclass
class PreferenceStats:
    """What ``data check`` reports for the chosen conversations, plus the pairs."""

    sft: DataStats
    train: PairStats
    eval: PairStats

    def to_dict(self) -> dict[str, Any]:
        return {**self.sft.to_dict(), "pairs": {"train": asdict(self.train), "eval": asdict(self.eval)}}


@dataclass
class PreparedPairs:
    """Tokenized pairs: rows of ``prompt_ids``, ``chosen_ids``, ``rejected_ids``."""

    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    stats: PreferenceStats
    chosen: PreparedData = field(repr=False)  # the chosen conversations as SFT data (eval records, formatter)

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        return self.chosen.eval_records

    @property
    def formatter(self) -> ChatFormatter:
        return self.chosen.formatter

    def lengths(self) -> list[int]:
        """Tokens of each training pair's longer sequence (what one of its rows pads to)."""
        return [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in self.train]


def split_answer(fmt: ChatFormatter, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a conversation whose last turn is the answer; the answer's ids end
    with the end-of-turn token (the newline some templates put after it is left out)."""
    prompt_text = fmt.render(messages[:-1], add_generation_prompt=True)
    full = fmt.render(messages)
    if not full.startswith(prompt_text):
        raise DataError("the chat template renders the prompt differently inside the conversation")
    end = len(full.rstrip())
    enc = fmt.tok(full[:end], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids: list[int] = enc["input_ids"]
    k = next((i for i, (s, _e) in enumerate(enc["offset_mapping"]) if s >= len(prompt_text)), len(ids))
    return ids[:k], ids[k:]


def encode_pair(
    fmt: ChatFormatter, item: dict[str, Any], max_len: int, overlength: str, stats: PairStats
) -> dict[str, list[int]] | None:
    """One pair's ids (None when it is dropped; counted in ``stats``)."""
    chosen_msgs = item["messages"]
    rejected_msgs = [*chosen_msgs[:-1], {"role": "assistant", "content": item["rejected"]}]
    prompt, chosen = split_answer(fmt, chosen_msgs)
    prompt_r, rejected = split_answer(fmt, rejected_msgs)
    if prompt_r != prompt:  # a token merged across the boundary differently: keep the shared prefix
        n = next(
            (i for i, (a, b) in enumerate(zip(prompt, prompt_r, strict=False)) if a != b),
            min(len(prompt), len(prompt_r)),
        )
        chosen, rejected, prompt = prompt[n:] + chosen, prompt_r[n:] + rejected, prompt[:n]
    if len(prompt) >= max_len:
        stats.dropped_prompt_too_long += 1
        return None
    room = max_len - len(prompt)
    if max(len(chosen), len(rejected)) > room:
        if overlength == "drop":
            stats.dropped_overlength += 1
            return None
        stats.truncated += 1
        chosen, rejected = chosen[:room], rejected[:room]
    stats.pairs += 1
    stats.prompt_tokens += len(prompt)
    stats.chosen_tokens += len(chosen)
    stats.rejected_tokens += len(rejected)
    stats.longest = max(stats.longest, len(prompt) + max(len(chosen), len(rejected)))
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def _encode_split(
    records: list[dict[str, Any]], fmt: ChatFormatter, cfg: Config, stats: PairStats
) -> list[dict[str, list[int]]]:
    rows = []
    for item in records:
        if "rejected" not in item:
            stats.not_pairs += 1
            continue
        row = encode_pair(fmt, item, cfg.model.max_seq_length, cfg.data.overlength, stats)
        if row is not None:
            rows.append(row)
    return rows


def prepare_pairs(cfg: Config, tokenizer: Any) -> PreparedPairs:
    """Read, check and tokenize the preference pairs of ``data.train_file`` / ``data.eval_file``."""
    chosen = prepare_data(cfg, tokenizer)
    tr, ev = PairStats(), PairStats()
    train = _encode_split(chosen.train_records, chosen.formatter, cfg, tr)
    evals = _encode_split(chosen.eval_records, chosen.formatter, cfg, ev)
    if not train:
        raise DataError(
            f"{cfg.data.train_file}: no preference pair to train on ({tr.not_pairs} records have no 'rejected', "
            f"{tr.dropped_prompt_too_long} prompts fill model.max_seq_length, {tr.dropped_overlength} pairs too "
            "long); give records with prompt, chosen and rejected (legaltune data make-preference builds them)"
        )
    return PreparedPairs(train, evals, PreferenceStats(chosen.stats, tr, ev), chosen)


def orpo_row(pair: dict[str, list[int]]) -> dict[str, list[int]]:
    """A pair in the columns TRL's ORPOTrainer reads (prompt + answer sequences, prompt labels masked)."""
    prompt = pair["prompt_ids"]
    out: dict[str, list[int]] = {
        "prompt_input_ids": prompt,
        "prompt_attention_mask": [1] * len(prompt),
    }
    for side in ("chosen", "rejected"):
        answer = pair[f"{side}_ids"]
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out
