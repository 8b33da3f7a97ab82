"""`legaltune generate` (batched, resumable JSONL) and `legaltune chat` over a pipe, on a tiny run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.test_eval import make_tiny_run, write_jsonl

QUESTIONS = [
    {"id": "a", "question": "Thời gian thử việc tối đa là bao lâu?"},
    {"question": "Tuổi kết hôn của nữ là bao nhiêu?"},  # no id: matched by its input line
    {"messages": [{"role": "user", "content": "Nghỉ phép năm bao nhiêu ngày?"}]},
    {
        "id": "d",
        "question": "Công ty nợ lương thì sao?",
        "context": "Điều 35 Bộ luật Lao động 2019 …",
        "answer": "Được nghỉ không cần báo trước (điểm b khoản 2 Điều 35).",
    },
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("gen"), tokenizer, system_prompt="Bạn là trợ lý pháp lý.")


@pytest.fixture(scope="module")
def gen(run):
    from legaltune.generate.load import load_generator

    return load_generator(run_dir=run)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_generate_writes_rows_and_resumes(run, gen, tmp_path):
    from legaltune.generate.file import generate_file

    inp, out = write_jsonl(tmp_path / "q.jsonl", QUESTIONS), tmp_path / "a.jsonl"
    kw = {"max_new_tokens": 3, "batch_size": 2, "show_progress": False}
    first = generate_file(inp, out, run_dir=run, **kw)  # loads the run itself once
    check = first.pop("citation_check")
    assert first == {"total": 4, "skipped": 0, "generated": 4, "output": str(out)}
    assert check["answers"] == 4
    rows = [json.loads(x) for x in lines(out)]
    assert [r["input_line"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert isinstance(r["answer"], str) and isinstance(r["stopped"], bool)
        assert 0 < r["new_tokens"] <= 3 and r["model"] == str(run.resolve())
    assert rows[0]["id"] == "a" and rows[3]["context"].startswith("Điều 35")
    assert rows[3]["reference"].startswith("Được nghỉ")  # the gold answer is kept, not overwritten

    before = out.read_bytes()
    assert generate_file(inp, out, run_dir=run, **kw)["skipped"] == 4  # and returns without loading
    assert out.read_bytes() == before

    # Delete the id-less row: only it is answered again, appended; every other line is untouched.
    kept = lines(out)
    out.write_text("".join(kept[:1] + kept[2:]), encoding="utf-8")
    again = generate_file(inp, out, generator=gen, **kw)
    assert (again["generated"], again["skipped"]) == (1, 3)
    now = lines(out)
    assert now[:3] == kept[:1] + kept[2:] and json.loads(now[3]) == json.loads(kept[1])  # greedy: same answer

    # A crash mid-write leaves a half line: it is cut off and its row regenerated, nothing else changes.
    out.write_text("".join(now[:3]) + now[3][:20], encoding="utf-8")
    generate_file(inp, out, generator=gen, **kw)
    final = lines(out)
    assert final[:3] == now[:3] and final[3] == now[3] and len(final) == 4


def test_generate_refuses_to_mix_models_and_checks_input(run, gen, tmp_path):
    from legaltune.generate.file import generate_file

    inp, out = write_jsonl(tmp_path / "q.jsonl", QUESTIONS[:1]), tmp_path / "a.jsonl"
    generate_file(inp, out, model_name=str(run.parent / "base"), max_new_tokens=2, show_progress=False)
    assert json.loads(lines(out)[0])["model"] == str(run.parent / "base")
    with pytest.raises(ValueError, match="another --output"):
        generate_file(inp, out, generator=gen, max_new_tokens=2, show_progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "x"}\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: a row needs"):
        generate_file(bad, tmp_path / "b.jsonl", generator=gen, show_progress=False)
    write_jsonl(bad, [{"id": 1, "question": "x"}, {"id": 1, "question": "y"}])
    with pytest.raises(ValueError, match="duplicate ids"):
        generate_file(bad, tmp_path / "b.jsonl", generator=gen, show_progress=False)


def test_chat_over_a_pipe(gen, monkeypatch):
    import legaltune.generate.chat as chat

    seen: list[list[dict[str, str]]] = []
    real = chat._prompt_ids

    def spy(tokenizer, messages, template, device):
        seen.append(messages)
        return real(tokenizer, messages, template, device)

    monkeypatch.setattr(chat, "_prompt_ids", spy)
    script = "Câu hỏi một?\nCâu hỏi hai?\n/reset\n\n/system Bạn là luật sư.\nCâu hỏi ba?\n/exit\nkhông đọc\n"
    out, err = io.StringIO(), io.StringIO()
    turns = chat.chat_loop(
        gen.model,
        gen.tokenizer,
        system_prompt=gen.system_prompt,
        template=gen.template,
        end_of_turn=gen.end_of_turn,
        stream=True,
        input_stream=io.StringIO(script),
        output=out,
        status=err,
        max_new_tokens=3,
    )
    assert [t["question"] for t in turns] == ["Câu hỏi một?", "Câu hỏi hai?", "Câu hỏi ba?"]
    # history kept between lines, cleared by /reset; /system replaces the system prompt
    assert [[m["role"] for m in s] for s in seen] == [
        ["system", "user"],
        ["system", "user", "assistant", "user"],
        ["system", "user"],
    ]
    assert seen[1][2]["content"] == turns[0]["answer"] and seen[2][0]["content"] == "Bạn là luật sư."
    # stdout carries the streamed answers only; notices went to stderr
    assert out.getvalue().split() == " ".join(t["answer"] for t in turns).split()
    assert "conversation cleared" in err.getvalue() and "luật sư" in err.getvalue()


def _quiet_chat(gen, text, out, status, **kw):
    from legaltune.generate.chat import chat_loop

    return chat_loop(
        gen.model,
        gen.tokenizer,
        system_prompt=None,
        template=gen.template,
        end_of_turn=gen.end_of_turn,
        stream=False,
        input_stream=io.StringIO(text),
        output=out,
        status=status,
        **kw,
    )


def test_chat_without_streaming_writes_each_answer_once(gen):
    out = io.StringIO()
    # no final newline
    turns = _quiet_chat(
        gen, "Điều 35 quy định gì?\n/unknown\nCòn Điều 36?", out, io.StringIO(), max_new_tokens=2
    )
    assert len(turns) == 2
    assert out.getvalue() == "".join(t["answer"] + "\n" for t in turns)


def test_chat_drops_oldest_turns_beyond_the_context(gen, monkeypatch):
    from legaltune.generate.chat import _prompt_ids, chat_loop

    q = "Điều 35 quy định gì?"
    system = [{"role": "system", "content": gen.system_prompt}]
    first = _prompt_ids(gen.tokenizer, [*system, {"role": "user", "content": q}], gen.template, "cpu")
    # Room for one question and its answer, not for two.
    monkeypatch.setattr(gen.model.config, "max_position_embeddings", first.shape[1] + 3 + 2)
    err = io.StringIO()
    turns = chat_loop(
        gen.model,
        gen.tokenizer,
        system_prompt=gen.system_prompt,
        template=gen.template,
        end_of_turn=gen.end_of_turn,
        input_stream=io.StringIO(f"{q}\n{q}\n"),
        output=io.StringIO(),
        status=err,
        max_new_tokens=3,
    )
    assert len(turns) == 2 and "dropped the oldest turn" in err.getvalue()


def test_rows_without_context_get_law_text_as_in_training(gen):
    import dataclasses

    from legaltune.generate.rows import row_messages

    grounded = dataclasses.replace(gen, context_fill="cited", _filler=None, _verifier=None)
    cited = row_messages(
        {"question": "Nghỉ việc báo trước mấy ngày?", "citation": {"number": "45/2019/QH14", "article": 35}},
        grounded,
    )
    assert cited[-1]["content"].startswith(
        "Căn cứ pháp lý tham khảo:\nĐiều 35 Bộ luật Lao động 2019 (45/2019/QH14). Quyền đơn phương"
    )
    # no citation to look up: the best BM25 articles, as `legaltune chat` does for every question
    retrieved = row_messages({"question": "thời giờ làm việc bình thường một tuần"}, grounded)[-1]["content"]
    assert "Điều 105 Bộ luật Lao động 2019" in retrieved and retrieved.endswith(
        "Câu hỏi: thời giờ làm việc bình thường một tuần"
    )
    own = row_messages({"question": "Q?", "context": "Điều riêng."}, grounded)[-1]["content"]
    assert own == "Căn cứ pháp lý tham khảo:\nĐiều riêng.\n\nCâu hỏi: Q?"  # a row's own context wins
    assert row_messages({"question": "Q?"}, gen)[-1]["content"] == "Q?"  # the run trained without: none


def test_chat_marks_citations_and_puts_law_text_before_the_question(gen):
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier

    asked = []

    def context(question):
        asked.append(question)
        return "Điều 105 Bộ luật Lao động 2019 (45/2019/QH14). Thời giờ làm việc bình thường\n…"

    status = io.StringIO()
    turns = _quiet_chat(
        gen,
        "Một tuần làm bao nhiêu giờ?\n",
        io.StringIO(),
        status,
        max_new_tokens=3,
        context=context,
        verifier=Verifier(build_corpus()),
    )
    assert asked == ["Một tuần làm bao nhiêu giờ?"]
    assert turns[0]["question"] == "Một tuần làm bao nhiêu giờ?"
    marks = [line for line in status.getvalue().splitlines() if line.startswith("  ")]
    assert len(marks) == len(turns[0]["citations"])  # one marked line per citation the answer made


@pytest.mark.parametrize(
    "bad_row,expected",
    [
        ({"id": 2}, "a row needs a non-empty 'question'"),
        ({"question": "   "}, "a row needs a non-empty 'question'"),
        ({"messages": "hi"}, "'messages' must be a list"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "must end with a user turn"),
    ],
)
def test_generate_checks_every_row_before_loading_a_model(tmp_path, monkeypatch, bad_row, expected):
    from legaltune.generate import file as batch

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(batch, "load_generator", no_load)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Hỏi?"}, bad_row])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{expected}"):
        batch.generate_file(bad, tmp_path / "out.jsonl", model_name="smollm2-135m-instruct")
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_cli_fails_on_a_bad_row_in_seconds(tmp_path):
    """A real `legaltune generate` run: the error names file:line, exit 2, no traceback, no model load."""
    import subprocess
    import sys
    import time

    bad = write_jsonl(tmp_path / "q.jsonl", [{"question": "Hỏi?"}, {"id": 7, "context": "Điều 1"}])
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "generate", "--model", "smollm2-135m-instruct"]
        + ["--input", str(bad), "--output", str(tmp_path / "a.jsonl")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:2: a row needs a non-empty 'question'" in proc.stderr and "Traceback" not in proc.stderr
    assert "Loading" not in proc.stderr and time.perf_counter() - t0 < 60
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "legaltune.cli", "generate", "--model", "smollm2-135m-instruct"]
        + ["--input", str(empty), "--output", str(tmp_path / "a.jsonl")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"{empty} has no records" in proc.stderr


def test_model_loading_commands_print_no_future_warning(run, tmp_path):
    """chat and generate on a run: PEFT's read of a deprecated transformers property stays quiet
    (filtered around the wrap only), and no other FutureWarning reaches the user."""
    import subprocess
    import sys

    base = [sys.executable, "-W", "default", "-m", "legaltune.cli"]
    chat = subprocess.run(
        [*base, "chat", "--run", str(run), "--max-new-tokens", "2"],
        input="Xin chào\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    inp = write_jsonl(tmp_path / "q.jsonl", QUESTIONS[:1])
    gen = subprocess.run(
        [*base, "generate", "--run", str(run), "--input", str(inp), "--output", str(tmp_path / "a.jsonl")]
        + ["--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for proc in (chat, gen):
        assert proc.returncode == 0, proc.stderr
        assert "FutureWarning" not in proc.stderr and "is_gradient_checkpointing" not in proc.stderr, (
            proc.stderr
        )
