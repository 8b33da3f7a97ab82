"""From data files to tokenized, masked (and optionally packed) train/eval datasets, with stats.

Nothing is dropped, cut or fixed silently: every skipped record, duplicate, truncation and
hygiene change is counted in DataStats, which `legaltune data check` prints and training saves.
"""

from __future__ import annotations

import json
import random
import statistics
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config
from legaltune.corpus.alqac import load_corpus
from legaltune.data.alqac import join_question
from legaltune.data.context import ContextCounts, ContextFiller
from legaltune.data.format import ChatFormatter, load_template
from legaltune.data.pack import efficiency, pack_examples
from legaltune.data.schemas import (
    RecordError,
    detect_schema,
    is_missing,
    preference_chosen,
    preference_rejected,
    to_messages,
)
from legaltune.data.sources import split_train_eval
from legaltune.records.read import DataError, read_records
from legaltune.text import vietnamese as vn


@dataclass
class SplitStats:
    records: int = 0
    examples: int = 0  # after dropping
    rows: int = 0  # packed rows (= examples without packing)
    schemas: dict[str, int] = field(default_factory=dict)
    skipped_bad: int = 0
    skipped_reasons: list[str] = field(default_factory=list)  # first few, with file:line
    duplicates: int = 0
    not_selected: int = 0  # left out by data.max_train_examples / max_eval_examples
    truncated: int = 0
    answers_lost_tokens: int = 0
    lost_trained_tokens: int = 0
    dropped_overlength: int = 0
    dropped_no_trained_tokens: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    chars: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)
    efficiency: dict[str, float] = field(default_factory=dict)
    context: ContextCounts | None = None  # what data.context_fill did (None when it is off)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class DataStats:
    train: SplitStats
    eval: SplitStats
    hygiene: dict[str, int]
    overlap_train_eval: int
    max_seq_length: int
    packing: bool
    train_on: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for split in ("train", "eval"):
            s = getattr(self, split)
            d[split]["trained_fraction"] = round(s.trained_fraction, 4)
            d[split]["chars_per_token"] = round(s.chars / s.tokens, 3) if s.tokens else None
        return d


@dataclass
class PreparedData:
    train: list[dict[str, Any]]  # rows: input_ids, labels (+ seq_lens when packed)
    eval: list[dict[str, Any]]
    stats: DataStats
    eval_records: list[dict[str, Any]]  # the eval conversations (for generation metrics)
    formatter: ChatFormatter
    first_example: dict[str, Any] | None = None
    # the training conversations, as selected (preference records also carry "rejected")
    train_records: list[dict[str, Any]] = field(default_factory=list)


def _clean_text(text: str, field: str, cfg: Config, report: vn.HygieneReport) -> str:
    """One text through the hygiene steps; mojibake is an error unless it can be and is set to be repaired."""
    d = cfg.data
    legacy = vn.detect_legacy_encoding(text)
    if legacy == vn.DOUBLE_UTF8 and not d.fix_mojibake:
        raise RecordError(
            field,
            "text looks like UTF-8 read as Windows-1252/Latin-1 and saved again (mojibake, e.g. 'Bá»™ luáº­t' "
            "for 'Bộ luật'); set data.fix_mojibake: true to repair it (ftfy; repaired texts are counted), "
            "or re-save the file as UTF-8",
        )
    if legacy and legacy != vn.DOUBLE_UTF8:
        raise RecordError(
            field,
            f"text looks like {legacy}-encoded Vietnamese read as Latin-1 (mojibake); "
            "convert the file to Unicode UTF-8 (e.g. with UniKey's converter) before training",
        )
    return vn.clean(
        text,
        nfc=d.nfc,
        tone_style=d.tone_style,  # type: ignore[arg-type]
        strip_underscores=d.strip_word_underscores,
        fix_mojibake=d.fix_mojibake,
        report=report,
    )


def _clean_messages(
    msgs: list[dict[str, str]], cfg: Config, report: vn.HygieneReport
) -> list[dict[str, str]]:
    return [
        {"role": m["role"], "content": _clean_text(m["content"], f"{m['role']} content", cfg, report)}
        for m in msgs
    ]


def _records_to_items(
    records: list[tuple[str, dict[str, Any]]],
    cfg: Config,
    stats: SplitStats,
    report: vn.HygieneReport,
    corpus: Any,
    filler: ContextFiller | None = None,
) -> list[dict[str, Any]]:
    """Validate and normalise records; each item holds messages (or text), its location and its reference."""
    items = []
    d = cfg.data
    for loc, rec in records:
        stats.records += 1
        try:
            schema = d.format if d.format != "auto" else detect_schema(rec, d.dataset_text_field)
            if schema is None:
                raise RecordError(
                    "(record)",
                    f"keys {sorted(rec)} match no schema; set data.format: legal_qa (or text, alpaca, chat, alqac)",
                )
            stats.schemas[schema] = stats.schemas.get(schema, 0) + 1
            if schema == "text":
                text = rec.get(d.dataset_text_field)
                if is_missing(text) or not isinstance(text, str) or not text.strip():
                    raise RecordError(d.dataset_text_field, "must be a non-empty string")
                items.append({"loc": loc, "text": _clean_text(text, d.dataset_text_field, cfg, report)})
                continue
            if schema == "alqac":
                rec = join_question(rec, corpus, d.corpus_file or "")
            from_corpus = False
            rejected = None
            if schema == "preference":
                # the prompt and chosen answer make the conversation; the rejected answer rides along
                rejected = preference_rejected(rec)
                rec, schema = preference_chosen(rec)
            if filler is not None:
                if stats.context is None:
                    stats.context = ContextCounts(filler.mode)
                filled = filler.fill(rec, schema, loc, stats.context)
                from_corpus, rec = filled is not rec, filled
            msgs = to_messages(rec, schema, use_context=d.use_context)
            msgs = _clean_messages(msgs, cfg, report)
            if d.system_prompt and msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": d.system_prompt}, *msgs]
            item = {"loc": loc, "messages": msgs, "id": rec.get("id")}
            if from_corpus:
                item["context_from_corpus"] = True  # eval reports these records apart
            if rejected is not None:
                item["rejected"] = _clean_messages([{"role": "assistant", "content": rejected}], cfg, report)[
                    0
                ]["content"]
            items.append(item)
        except RecordError as exc:
            if d.on_bad_record == "error":
                raise DataError(
                    f"{loc}: {exc} (set data.on_bad_record: skip to skip and count such records)"
                ) from None
            stats.skipped_bad += 1
            if len(stats.skipped_reasons) < 5:
                stats.skipped_reasons.append(f"{loc}: {exc}")
    return items


def _dedup(items: list[dict[str, Any]], stats: SplitStats) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for it in items:
        key = json.dumps(
            [it.get("messages") or it.get("text"), it.get("rejected")], ensure_ascii=False, sort_keys=True
        )
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        out.append(it)
    return out


def _subsample(
    items: list[dict[str, Any]], limit: int | None, seed: int, stats: SplitStats
) -> list[dict[str, Any]]:
    """A seeded sample of ``limit`` items in their original order; the number left out is recorded."""
    if limit is None or len(items) <= limit:
        return items
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    stats.not_selected = len(items) - limit
    return [it for i, it in enumerate(items) if i in keep]


def _question_key(it: dict[str, Any]) -> str | None:
    msgs = it.get("messages")
    if not msgs:
        return None
    user = next((m["content"] for m in msgs if m["role"] == "user"), "")
    return " ".join(vn.normalize_tone_marks(user.lower()).split())


def _encode_one(item: dict[str, Any], fmt: ChatFormatter, max_len: int, mode: str) -> dict[str, Any]:
    """One record → ids, labels and the counts the split statistics need (runs in datasets.map workers)."""
    msgs = item.get("messages")
    enc = fmt.encode(msgs, max_len, mode) if msgs else fmt.encode_text(item["text"], max_len, mode)
    chars = sum(len(m["content"]) for m in msgs) if msgs else len(item["text"])
    if enc is None:
        return {
            "input_ids": [],
            "labels": [],
            "trained": 0,
            "truncated": False,
            "lost": 0,
            "dropped": True,
            "chars": chars,
        }
    return {
        "input_ids": enc.input_ids,
        "labels": enc.labels,
        "trained": enc.trained,
        "truncated": enc.truncated,
        "lost": enc.lost_trained,
        "dropped": False,
        "chars": chars,
    }


def _encode(
    items: list[dict[str, Any]], fmt: ChatFormatter, cfg: Config, stats: SplitStats
) -> list[dict[str, Any]]:
    """Tokenize and label with `datasets.map`, in data.dataloader_num_workers processes for large sets."""
    from datasets import Dataset

    if not items:
        return []
    max_len, mode = cfg.model.max_seq_length, cfg.data.overlength
    # messages/text columns only: `loc`/`id` may be missing or mixed-typed across records
    table = Dataset.from_list([{"messages": it.get("messages"), "text": it.get("text")} for it in items])
    workers = cfg.data.dataloader_num_workers
    # Worker processes pay off only on large sets (each re-imports the tokenizer).
    num_proc = workers if workers > 1 and len(items) >= 2000 else None
    mapped = table.map(
        _encode_one,
        fn_kwargs={"fmt": fmt, "max_len": max_len, "mode": mode},
        remove_columns=table.column_names,
        num_proc=num_proc,
        desc="tokenizing",
        keep_in_memory=True,
        # nothing is cached (in memory), so the fingerprint is never looked up; without one given,
        # datasets pickles the tokenizer inside fn_kwargs to hash it: 5.6 s a call for Gemma 3's
        new_fingerprint=uuid.uuid4().hex,
    )
    out = []
    for row in mapped:
        if row["dropped"]:
            stats.dropped_overlength += 1
            continue
        if row["truncated"]:
            stats.truncated += 1
            if row["lost"]:
                stats.answers_lost_tokens += 1
                stats.lost_trained_tokens += row["lost"]
        if row["trained"] == 0:
            stats.dropped_no_trained_tokens += 1
            continue
        stats.tokens += len(row["input_ids"])
        stats.trained_tokens += row["trained"]
        stats.chars += row["chars"]
        out.append({"input_ids": row["input_ids"], "labels": row["labels"]})
    stats.examples = len(out)
    return out


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    s = sorted(lengths)
    pick = {p: s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] for p in (50, 90, 95, 99)}
    return {
        "min": s[0],
        **{f"p{p}": v for p, v in pick.items()},
        "max": s[-1],
        "mean": int(statistics.fmean(s)),
    }


def _formatter_and_contexts(cfg: Config, tokenizer: Any) -> tuple[ChatFormatter, dict[str, Any], Any]:
    """(chat formatter, ALQAC corpus, context filler or None) as data.* configures them."""
    d = cfg.data
    formatter = ChatFormatter(tokenizer, template=load_template(d.chat_template), train_on=d.train_on)
    corpus = load_corpus(d.corpus_file) if d.corpus_file else {}
    filler = None
    if d.context_fill != "none":
        from legaltune.corpus import build_corpus

        filler = ContextFiller(
            build_corpus(d.corpus_file), d.context_fill, top_k=d.context_top_k, max_chars=d.context_max_chars
        )
    return formatter, corpus, filler


def _finish_split(rows: list[dict[str, Any]], cfg: Config, st: SplitStats) -> list[dict[str, Any]]:
    """A split's length and efficiency figures; its rows packed when data.packing is on."""
    lengths = [len(r["input_ids"]) for r in rows]
    st.length_percentiles = _percentiles(lengths)
    packed = pack_examples(rows, cfg.model.max_seq_length) if cfg.data.packing and rows else None
    st.rows = len(packed) if packed is not None else len(rows)
    bs = cfg.training.per_device_train_batch_size
    st.efficiency = {
        k: round(v, 4)
        for k, v in efficiency(lengths, cfg.model.max_seq_length, bs, st.rows if packed else None).items()
    }
    return packed if packed is not None else rows


def prepare_eval_data(cfg: Config, tokenizer: Any, eval_file: str | Path) -> PreparedData:
    """An evaluation set alone (`legaltune eval --data FILE`): read, cleaned, formatted, masked and
    (packed) exactly as the run's data.eval_file is for training, with no training file read."""
    d = cfg.data
    formatter, corpus, filler = _formatter_and_contexts(cfg, tokenizer)
    report = vn.HygieneReport()
    ev_stats = SplitStats()
    items = _records_to_items(read_records(str(eval_file), d.encoding), cfg, ev_stats, report, corpus, filler)
    if d.dedup:
        items = _dedup(items, ev_stats)
    evals = _finish_split(_encode(items, formatter, cfg, ev_stats), cfg, ev_stats)
    stats = DataStats(
        SplitStats(), ev_stats, report.as_dict(), 0, cfg.model.max_seq_length, d.packing, d.train_on
    )
    records = [it for it in items if "messages" in it]
    return PreparedData([], evals, stats, records, formatter)


def prepare_data(cfg: Config, tokenizer: Any) -> PreparedData:
    """Read, validate, clean, split, format, mask, (pack) and count."""
    d = cfg.data
    if not d.train_file:
        raise DataError("data.train_file is not set; point it at your training data (see data/vi_legal_qa/)")
    formatter, corpus, filler = _formatter_and_contexts(cfg, tokenizer)
    report = vn.HygieneReport()
    tr_stats, ev_stats = SplitStats(), SplitStats()
    train_items = _records_to_items(
        read_records(d.train_file, d.encoding), cfg, tr_stats, report, corpus, filler
    )
    if d.dedup:
        train_items = _dedup(train_items, tr_stats)
    if d.eval_file:
        eval_items = _records_to_items(
            read_records(d.eval_file, d.encoding), cfg, ev_stats, report, corpus, filler
        )
        if d.dedup:
            eval_items = _dedup(eval_items, ev_stats)
    else:
        train_items, eval_items = split_train_eval(train_items, d.val_split, cfg.effective_seed)
        ev_stats.records = len(eval_items)
    train_items = _subsample(train_items, d.max_train_examples, cfg.effective_seed, tr_stats)
    eval_items = _subsample(eval_items, d.max_eval_examples, cfg.effective_seed, ev_stats)
    train_q = {_question_key(it) for it in train_items} - {None}
    overlap = sum(1 for it in eval_items if _question_key(it) in train_q)

    train = _encode(train_items, formatter, cfg, tr_stats)
    evals = _encode(eval_items, formatter, cfg, ev_stats)
    if not train:
        raise DataError(
            f"{d.train_file}: no training example has a trained token "
            f"({tr_stats.dropped_no_trained_tokens} had none, {tr_stats.dropped_overlength} too long, "
            f"{tr_stats.skipped_bad} malformed); check data.train_on and model.max_seq_length"
        )
    train = _finish_split(train, cfg, tr_stats)
    evals = _finish_split(evals, cfg, ev_stats)
    stats = DataStats(
        tr_stats, ev_stats, report.as_dict(), overlap, cfg.model.max_seq_length, d.packing, d.train_on
    )
    first = None
    if train_items:
        it = train_items[0]
        if "messages" in it:
            text, spans = formatter.spans(it["messages"])
        else:
            text, spans = it["text"], formatter.text_spans(it["text"])
        first = {"loc": it["loc"], "text": text, "spans": spans}
    eval_records = [it for it in eval_items if "messages" in it]
    train_records = [it for it in train_items if "messages" in it]
    return PreparedData(train, evals, stats, eval_records, formatter, first, train_records)
