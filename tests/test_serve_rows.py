"""Row bookkeeping of the server's batches, token by token with the embedded tokenizer (no model)."""

from __future__ import annotations

import pytest

from legaltune.serve.rows import CANCELLED, LENGTH, STOP, Row


def feed(
    tokenizer,
    text: str,
    *,
    max_tokens: int = 100,
    stop: tuple[str, ...] = (),
    cancel_after: int | None = None,
):
    """Feed `text`'s tokens to a Row one at a time; (pieces emitted, the row, tokens fed)."""
    pieces, ended = [], []
    fed = [0]
    row = Row(
        max_tokens,
        stop,
        emit=pieces.append,
        is_cancelled=lambda: cancel_after is not None and fed[0] > cancel_after,
        on_end=ended.append,
    )
    stops = {tokenizer.eos_token_id}
    for token in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]:
        if row.done:
            break
        fed[0] += 1
        row.add(token, stops, tokenizer)
    assert ended == [row] if row.done else ended == []
    return pieces, row, fed[0]


VIETNAMESE = "Theo khoản 1 Điều 35, người lao động được đơn phương chấm dứt hợp đồng."


def test_pieces_add_up_to_the_answer_and_no_broken_character_is_sent(tokenizer):
    pieces, row, _ = feed(tokenizer, VIETNAMESE)
    assert row.finish_reason == STOP and "".join(pieces) == row.text == VIETNAMESE
    assert len(pieces) > 10 and not any("\ufffd" in p for p in pieces)  # byte-level BPE splits "đ", "ơ"


def test_stop_string_split_over_tokens_is_never_sent(tokenizer):
    pieces, row, fed = feed(tokenizer, VIETNAMESE, stop=("Điều 35",))
    assert row.finish_reason == STOP and row.text.rstrip() == "Theo khoản 1"
    assert "".join(pieces) == row.text and fed < len(tokenizer(VIETNAMESE)["input_ids"])


def test_token_limit_and_cancellation(tokenizer):
    pieces, row, fed = feed(tokenizer, VIETNAMESE, max_tokens=5)
    assert (row.finish_reason, len(row.tokens), fed) == (LENGTH, 5, 5)
    assert "".join(pieces) == row.text and VIETNAMESE.startswith(row.text)
    pieces, row, fed = feed(tokenizer, VIETNAMESE, cancel_after=3)
    assert row.finish_reason == CANCELLED and len(row.tokens) == 3 and fed == 4


@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"max_pending": 0}])
def test_engine_rejects_empty_bounds(tiny_llama, tokenizer, bad):
    from legaltune.serve.engine import Engine, Variant

    with pytest.raises(ValueError, match="at least 1"):
        Engine(tiny_llama, tokenizer, [Variant("m", adapter=False)], **bad)
