"""Exported GGUFs run in llama.cpp itself (llama-cpp-python): the tuned embedded model answers there as
`legaltune generate` answers, and tiny random qwen2 / gemma3 models give transformers' logits.

llama-cpp-python has no wheel on PyPI; it builds from source in ~4 minutes (more on a busy machine),
so these tests skip when it is not installed. `.ci/run` installs it (pip caches the built wheel).
Measured here: f16 gives legaltune's greedy answer token for token; tiny models' logits
match within 0.05 % (qwen2) and 0.24 % (gemma3, sliding window shorter than the prompt) of the scale.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.servers import make_embedded_run
from tests.test_gguf_export import read_gguf

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="llama-cpp-python is not installed (pip install llama-cpp-python; it builds llama.cpp)",
)

QUESTION = "What is the capital of France?"
SENTENCE = "Người lao động có quyền đơn phương chấm dứt hợp đồng lao động theo Điều 35."
# max |Δlogit| / max |logit| against transformers in fp32 (measured: qwen2 0.0005, gemma3 0.0024)
F16_TOLERANCE = 0.01

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def llama(path: Path, **kwargs):
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False, **kwargs)
    try:
        yield llm
    finally:
        llm.close()  # explicitly: its destructor at interpreter exit raises


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_dir) -> Path:
    return make_embedded_run(tmp_path_factory.mktemp("gguf-run"), embedded_dir, lora_std=0.02)


@pytest.fixture(scope="module")
def expected(run):
    """legaltune's own greedy answer for the question, and the prompt it formats for it."""
    from legaltune.generate.answers import generate_answers
    from legaltune.generate.load import load_generator
    from legaltune.generate.rows import row_messages

    gen = load_generator(run_dir=run)
    convo = row_messages({"question": QUESTION}, gen)
    answer = generate_answers(
        gen.model,
        gen.tokenizer,
        [convo],
        max_new_tokens=24,
        chat_template=gen.template,
        end_of_turn=gen.end_of_turn,
    )[0]
    prompt = gen.tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    return answer, prompt, gen.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def llama_answer(path: Path, prompt: str, prompt_ids: list[int]) -> str:
    with llama(path) as llm:
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == prompt_ids  # same tokenizer
        out = llm.create_completion(prompt_ids, max_tokens=24, temperature=0.0, stop=["<|im_end|>"])
    return out["choices"][0]["text"].strip()


def test_llama_cpp_answers_as_legaltune(run, expected, tmp_path):
    """f16: llama.cpp's greedy answer is legaltune's, token for token. q8_0 (2.4 % logit error) agrees
    on the answer's start; later a near-tie may go the other way (measured: "Paris." vs "Paris, …")."""
    from legaltune.export.gguf_export import export_gguf

    answer, prompt, ids = expected
    assert "Paris" in answer.text
    f16 = export_gguf(run, tmp_path / "model-f16.gguf", type="f16")
    assert llama_answer(f16, prompt, ids) == answer.text
    q8 = export_gguf(run, tmp_path / "model-q8_0.gguf", type="q8_0")
    assert llama_answer(q8, prompt, ids).split()[:5] == answer.text.split()[:5]


def test_4_bit_types_load_and_stay_close(run, expected, tmp_path):
    """q4_0 (gguf's quantizer) and q4_k_m (llama.cpp's): llama.cpp loads them and their first answer
    tokens are the full-precision model's; the vocabulary matrix keeps 8 bits in q4_0."""
    from legaltune.export.gguf_export import export_gguf

    answer, prompt, ids = expected
    for kind, file_type in [("q4_0", 2), ("q4_k_m", 15)]:
        path = export_gguf(run, tmp_path / f"model-{kind}.gguf", type=kind)
        meta, tensors = read_gguf(path)
        assert meta["general.file_type"] == file_type
        text = llama_answer(path, prompt, ids)
        print(f"\n{kind}: {path.stat().st_size / 2**20:.0f} MiB, answer {text!r}")
        assert text.split()[:3] == answer.text.split()[:3]
    q4_types = {name: t for name, (_, t, _) in read_gguf(tmp_path / "model-q4_0.gguf")[1].items()}
    assert q4_types["token_embd.weight"] == 8 and q4_types["blk.0.ffn_up.weight"] == 2  # q8_0, q4_0


def tiny_model(kind: str, root: Path, tokenizer):
    """A random 2-layer qwen2 (q/k/v biases, untied head) or 6-layer gemma3 (5 sliding-window layers
    of window 8, one global; q/k norms) over the embedded tokenizer, saved to root/kind."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if kind == "qwen2":
        rope = {"rope_type": "default", "rope_theta": 1e6}
        model = Qwen2ForCausalLM(
            Qwen2Config(num_hidden_layers=2, tie_word_embeddings=False, rope_parameters=rope, **common)
        )
        perturb = "bias"  # zero-initialised: make them matter
    else:
        config = Gemma3TextConfig(
            num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **common
        )
        model = Gemma3ForCausalLM(config)
        perturb = "norm"  # zero-initialised (1 + w): make the +1 shift matter
    with torch.no_grad():
        for name, param in model.named_parameters():
            if perturb in name:
                param.normal_(0, 0.4)
    model.save_pretrained(root / kind)
    tokenizer.save_pretrained(root / kind)
    return model.eval(), root / kind


def relative_error(model, path: Path, ids: list[int]) -> float:
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].float().numpy()
    with llama(path, logits_all=True) as llm:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    return float(np.abs(got - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("kind", ["qwen2", "gemma3"])
def test_tiny_architectures_match_transformers_in_llama_cpp(kind, tokenizer, tmp_path, monkeypatch):
    from legaltune.export import gguf_arch
    from legaltune.export.gguf_export import export_gguf

    model, model_dir = tiny_model(kind, tmp_path, tokenizer)
    ids = tokenizer(SENTENCE)["input_ids"]
    path = export_gguf(model_dir, tmp_path / f"{kind}.gguf")
    meta, _ = read_gguf(path)
    assert meta["general.architecture"] == kind
    assert relative_error(model, path, ids) < F16_TOLERANCE
    if kind == "gemma3":
        assert meta["gemma3.attention.sliding_window"] == 8 and len(ids) > 8
        assert meta["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False]
        # what the test guards: without the +1 on Gemma's norms llama.cpp computes another model
        monkeypatch.setitem(
            gguf_arch.ARCHS,
            "gemma3",
            gguf_arch.Arch("gemma3", ("gemma3_text",), gguf_arch.gguf.MODEL_ARCH.GEMMA3),
        )
        broken = export_gguf(model_dir, tmp_path / "no-shift.gguf")
        assert relative_error(model, broken, ids) > 10 * F16_TOLERANCE


# --- SentencePiece-style tokenizers (Gemma 3): llama.cpp's "llama" tokenizer model ---------------

TEXTS = [
    SENTENCE,
    "Theo khoản 1 Điều 627 Bộ luật Dân sự 2015 (91/2015/QH13), di chúc phải được lập thành văn bản;\n\n"
    "nếu không thể  lập được di chúc bằng văn bản thì có thể di chúc miệng.",
    "<start_of_turn>user\nCâu hỏi: Di chúc bắt buộc phải lập thành văn bản không?<end_of_turn>\n<start_of_turn>model\n",
    "  hai dấu cách, emoji 🙂, chữ lạ 𝔘𝔫𝔦 và\ttab  ",
]


def sentencepiece_tokenizer(root: Path):
    """A Gemma-style tokenizer (▁ for spaces, byte fallback, merges recovered from piece scores, as
    transformers builds Gemma's) over pieces of Vietnamese legal text; saved to root."""
    import json
    from collections import Counter

    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    counts: Counter = Counter()
    lines = (Path(__file__).parents[1] / "data" / "vi_legal_qa" / "train.jsonl").read_text().splitlines()
    for line in lines[:60]:
        row = json.loads(line)
        for word in " ".join(str(v) for v in row.values() if isinstance(v, str)).split():
            piece = "\u2581" + word
            for size in range(1, min(len(piece), 6) + 1):
                for start in range(len(piece) - size + 1):
                    counts[piece[start : start + size]] += 1
    pieces = [p for p, _ in counts.most_common(3000)]
    vocab = {t: i for i, t in enumerate([*specials, *bytes_, *pieces])}
    scores = {t: -float(i) for t, i in vocab.items()}  # sentencepiece: the earlier piece merges first
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab, scores),
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.save_pretrained(root)
    return tok


def gemma_tokenizers(root: Path) -> list:
    out = [("synthetic", sentencepiece_tokenizer(root / "synthetic-tok"))]
    real = Path.home() / ".cache" / "legaltune" / "models" / "gemma-3-270m"  # after `make demo`
    if (real / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        out.append(("gemma-3-270m", AutoTokenizer.from_pretrained(real)))
    return out


def reversed_scores(real, merges: list) -> dict[str, float]:
    return {token: -score for token, score in real(merges).items()}


def test_sentencepiece_tokenizer_tokenizes_in_llama_cpp_as_in_transformers(tmp_path, monkeypatch):
    """Gemma 3's tokenizer exports as llama.cpp's 'llama' model (scores from the merge order): the
    same ids for Vietnamese text, spaces, byte fallback and turn markers; without the scores, not."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from legaltune.export import gguf_tokenizer
    from legaltune.export.gguf_export import export_gguf

    for name, tok in gemma_tokenizers(tmp_path):
        torch.manual_seed(0)
        config = Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        model_dir = tmp_path / name
        Gemma3ForCausalLM(config).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        path = export_gguf(model_dir, tmp_path / f"{name}.gguf")
        meta, _ = read_gguf(path)
        assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
        with llama(path, vocab_only=True) as llm:
            for text in TEXTS:
                assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], (
                    name,
                    text,
                )
        # what the test guards: with the scores in the opposite order llama.cpp merges differently
        # (equal scores are no check: merging leftmost-first reaches the same whole-word pieces)
        real = gguf_tokenizer.merge_scores
        monkeypatch.setattr(gguf_tokenizer, "merge_scores", functools.partial(reversed_scores, real))
        reversed_path = export_gguf(model_dir, tmp_path / f"{name}-reversed.gguf")
        monkeypatch.undo()
        with llama(reversed_path, vocab_only=True) as llm:
            assert any(
                llm.tokenize(t.encode(), add_bos=True, special=True) != tok(t)["input_ids"] for t in TEXTS
            )
