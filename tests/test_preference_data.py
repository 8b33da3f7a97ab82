"""Preference pairs: validation with file:line, the chosen conversation, tokenization and counts."""

import json

import pytest

from legaltune.config.load import build_config
from legaltune.data.preference import encode_pair, orpo_row, prepare_pairs
from legaltune.data.prepare import prepare_data
from legaltune.records.read import DataError

PAIRS = [
    {
        "prompt": "Thời gian thử việc tối đa là bao lâu?",
        "chosen": "Không quá 180 ngày theo Điều 25 Bộ luật Lao động 2019.",
        "rejected": "Không quá 180 ngày theo Điều 20 Bộ luật Lao động 2019.",
        "context": "Điều 25 quy định thời gian thử việc.",
        "citation": {"number": "45/2019/QH14", "article": 25},
    },
    {  # TRL's conversational form
        "prompt": [{"role": "user", "content": "Tuổi kết hôn của nữ?"}],
        "chosen": [
            {"role": "assistant", "content": "Từ đủ 18 tuổi (Điều 8 Luật Hôn nhân và gia đình 2014)."}
        ],
        "rejected": [{"role": "assistant", "content": "Từ đủ 16 tuổi."}],
    },
]


def write(tmp_path, rows, name="pairs.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return f


def cfg_for(tmp_path, f, **data):
    return build_config(
        {
            "model": {"model_name": "smollm2-135m-instruct", "max_seq_length": 256},
            "data": {"train_file": str(f), "dataloader_num_workers": 0, **data},
            "logging": {"eval_strategy": "no"},
        }
    )


def test_pairs_tokenize_as_the_chosen_conversation_trains(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, write(tmp_path, PAIRS))
    pairs = prepare_pairs(cfg, tokenizer)
    assert len(pairs.train) == 2 and pairs.stats.train.pairs == 2
    sft = prepare_data(cfg, tokenizer)  # SFT on the same file trains on the chosen answers
    for pair, row in zip(pairs.train, sft.train, strict=True):
        # prompt + chosen is exactly the SFT sequence up to its last trained token (the end-of-turn)
        last = max(i for i, label in enumerate(row["labels"]) if label != -100)
        assert pair["prompt_ids"] + pair["chosen_ids"] == row["input_ids"][: last + 1]
        first = min(i for i, label in enumerate(row["labels"]) if label != -100)
        assert len(pair["prompt_ids"]) == first  # the answer starts where SFT's loss starts
        eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert pair["chosen_ids"][-1] == eot and pair["rejected_ids"][-1] == eot
        assert pair["chosen_ids"] != pair["rejected_ids"]
    # the system prompt and the record's context are in the prompt, as in SFT
    prompt = tokenizer.decode(pairs.train[0]["prompt_ids"])
    assert "trợ lý pháp lý" in prompt and "Điều 25 quy định" in prompt
    assert tokenizer.decode(pairs.train[0]["rejected_ids"]).startswith("Không quá 180 ngày theo Điều 20")


@pytest.mark.parametrize(
    ("bad", "where", "what"),
    [
        ({"prompt": "Q?", "chosen": "A", "rejected": "A"}, "rejected", "same text as chosen"),
        ({"prompt": "Q?", "chosen": "A", "rejected": ""}, "rejected", "empty"),
        ({"prompt": "", "chosen": "A", "rejected": "B"}, "prompt", "empty"),
        ({"prompt": "Q?", "chosen": 3, "rejected": "B"}, "chosen", "must be a string"),
        (
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": "A",
                "rejected": [{"role": "user", "content": "B"}],
            },
            "rejected.role",
            "the assistant's",
        ),
        (
            {"prompt": [{"role": "robot", "content": "Q"}], "chosen": "A", "rejected": "B"},
            "prompt[0].role",
            "not one of",
        ),
    ],
)
def test_bad_pair_names_file_line_and_field(tmp_path, tokenizer, bad, where, what):
    f = write(tmp_path, [PAIRS[0], bad])
    with pytest.raises(DataError) as err:
        prepare_pairs(cfg_for(tmp_path, f), tokenizer)
    msg = str(err.value)
    assert f"{f}:2" in msg and f"field '{where}'" in msg and what in msg


def test_skipped_and_duplicate_pairs_are_counted(tmp_path, tokenizer):
    bad = {"prompt": "Q?", "chosen": "A", "rejected": "A"}
    f = write(tmp_path, [PAIRS[0], bad, PAIRS[0], PAIRS[1]])
    pairs = prepare_pairs(cfg_for(tmp_path, f, on_bad_record="skip"), tokenizer)
    st = pairs.stats.to_dict()
    assert st["train"]["skipped_bad"] == 1 and st["train"]["duplicates"] == 1
    assert st["pairs"]["train"]["pairs"] == 2 and len(pairs.train) == 2
    # a pair with another rejected answer is not a duplicate
    other = {**PAIRS[0], "rejected": "Không quá 60 ngày theo Điều 25."}
    assert len(prepare_pairs(cfg_for(tmp_path, write(tmp_path, [PAIRS[0], other])), tokenizer).train) == 2


def test_long_pairs_are_cut_or_dropped_and_counted(tmp_path, tokenizer):
    long_answer = "Theo Điều 25 Bộ luật Lao động 2019, " + "thời gian thử việc do hai bên thỏa thuận. " * 30
    rows = [
        {"prompt": "Thử việc?", "chosen": long_answer, "rejected": long_answer.replace("25", "20")},
        PAIRS[1],
    ]
    f = write(tmp_path, rows)
    cut = prepare_pairs(cfg_for(tmp_path, f), tokenizer)
    assert cut.stats.train.truncated == 1 and cut.stats.train.pairs == 2
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 256 for r in cut.train)
    dropped = prepare_pairs(cfg_for(tmp_path, f, overlength="drop"), tokenizer)
    assert dropped.stats.train.dropped_overlength == 1 and len(dropped.train) == 1


def test_prompt_that_fills_the_length_drops_its_pair(tmp_path, tokenizer):
    fmt = prepare_data(cfg_for(tmp_path, write(tmp_path, PAIRS)), tokenizer).formatter
    from legaltune.data.preference import PairStats

    stats = PairStats()
    item = {
        "messages": [{"role": "user", "content": "rất dài " * 400}, {"role": "assistant", "content": "A"}],
        "rejected": "B",
    }
    assert encode_pair(fmt, item, 256, "truncate", stats) is None
    assert stats.dropped_prompt_too_long == 1 and stats.pairs == 0


def test_a_file_without_pairs_is_an_error(tmp_path, tokenizer):
    f = write(tmp_path, [{"question": "Q?", "answer": "A"}])
    with pytest.raises(DataError, match="no preference pair"):
        prepare_pairs(cfg_for(tmp_path, f), tokenizer)


def test_orpo_rows_mask_the_prompt():
    row = orpo_row({"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]})
    assert row["chosen_input_ids"] == [1, 2, 3, 4, 5] and row["chosen_labels"] == [-100, -100, -100, 4, 5]
    assert row["rejected_input_ids"] == [1, 2, 3, 6] and row["rejected_labels"] == [-100, -100, -100, 6]
    assert row["prompt_input_ids"] == [1, 2, 3] and row["rejected_attention_mask"] == [1, 1, 1, 1]
