"""Exported GGUFs run in llama.cpp itself (llama-cpp-python): the tuned embedded model answers there as
`legaltune generate` answers, and tiny random qwen2 / gemma3 models give transformers' logits.

llama-cpp-python has no wheel on PyPI; it builds from source in ~4 minutes (more on a busy machine),
so these tests skip when it is not installed. `.ci/run` installs it (pip caches the built wheel).
Measured here: f16 gives legaltune's greedy answer token for token; tiny models' logits
match within 0.05 % (qwen2) and 0.24 % (gemma3, sliding window shorter than the prompt) of the scale.
"""

from __future__ import annotations

import contextlib
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
