"""GGUF export: read back with transformers' GGUF loader, the model and tokenizer match the merged model.

Logit tolerances (tiny random Llama, max |logit| ≈ 4.4, against the fp32 merged model): f16 measured
max |Δ| ≈ 0.004 (0.1 % of the scale), q8_0 ≈ 0.10 (2.4 %), no Q/K permutation ≈ 3 (70 %). bf16 is
checked weight by weight against bf16 rounding. A transformers read-back parses the 49,152 tokens and
48,900 merges with gguf's pure-Python reader (~10 s, twice per model), so read-backs are few and
shared; other checks use `read_gguf` below, a minimal GGUF parser independent of the gguf package.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_merge import VIETNAMESE, input_ids, logits, make_base, make_run, tokenizer_or_skip

# Bound on max |Δlogit| as a fraction of max |logit|: ~4-5x the measured error of each type.
TOLERANCE = {"f16": 0.005, "q8_0": 0.1}
F32, F16, Q8_0, BF16 = 0, 1, 8, 30  # ggml type ids
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path: Path):
    """(metadata, {tensor: (shape, ggml type, data as bytes)}) of a GGUF v3 file."""
    buf, pos = Path(path).read_bytes(), 4
    assert buf[:4] == b"GGUF"

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n : pos].decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, n = take("I"), take("Q")
            return [value(item) for _ in range(n)]
        return take(_SCALARS[kind])

    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3
    meta = {string(): value(take("I")) for _ in range(n_kv)}
    infos = []
    for _ in range(n_tensors):
        name, dims = string(), [take("Q") for _ in range(take("I"))]
        infos.append((name, tuple(reversed(dims)), take("I"), take("Q")))  # GGUF lists dims innermost first
    align = meta.get("general.alignment", 32)
    start = -(-pos // align) * align
    ends = [offset for *_, offset in infos[1:]] + [len(buf) - start]
    return meta, {n: (s, t, buf[start + o : start + e]) for (n, s, t, o), e in zip(infos, ends, strict=True)}


def decode(shape, kind: int, data: bytes) -> np.ndarray:
    if kind == F32:
        return np.frombuffer(data, np.float32, prod(shape)).reshape(shape)
    if kind == BF16:
        bits = np.frombuffer(data, np.uint16, prod(shape)).astype(np.uint32) << 16  # bf16 = top half of f32
        return bits.view(np.float32).reshape(shape)
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_or_skip()


def build_case(root: Path, tokenizer, tie: bool) -> dict:
    """A run, its fp32 merged model directory, and the merged model's logits on the Vietnamese sentence."""
    from transformers import AutoModelForCausalLM

    from legaltune.export.merge import merge_run

    run = make_run(root, tokenizer, tie=tie)
    merged = merge_run(run, root / "merged", dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    return {"run": run, "merged": merged, "model": model, "reference": logits(model, input_ids(tokenizer))}


@pytest.fixture(scope="module")
def tied(tmp_path_factory, tokenizer):
    return build_case(tmp_path_factory.mktemp("tied"), tokenizer, tie=True)


@pytest.fixture(scope="module")
def untied(tmp_path_factory, tokenizer):
    return build_case(tmp_path_factory.mktemp("untied"), tokenizer, tie=False)


def read_back_model(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def tied_f16(tied, tmp_path_factory):
    """The tied run exported to f16 and read back once: (path, model, tokenizer)."""
    from transformers import AutoTokenizer

    from legaltune.export.gguf_export import export_gguf

    path = export_gguf(tied["run"], tmp_path_factory.mktemp("f16") / "model.gguf", type="f16")
    return path, read_back_model(path), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def relative_error(model, tokenizer, reference) -> float:
    return ((logits(model, input_ids(tokenizer)) - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.slow
def test_f16_tied_run_reads_back_with_the_merged_logits(tied, tied_f16, tokenizer):
    path, model, _ = tied_f16
    assert relative_error(model, tokenizer, tied["reference"]) < TOLERANCE["f16"]
    _, tensors = read_gguf(path)
    # tied: no output tensor (llama.cpp reuses token_embd), and the reader infers tying from that
    assert "output.weight" not in tensors and model.config.tie_word_embeddings
    assert tensors["blk.1.ffn_down.weight"][1] == F16 and tensors["output_norm.weight"][1] == F32
    # no leftover partial file; the Ollama Modelfile beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.Modelfile", path.name]


@pytest.mark.slow
def test_q8_0_untied_model_directory_reads_back(untied, tokenizer, tmp_path):
    import gguf

    from legaltune.export.gguf_export import export_gguf

    try:
        gguf.quants.quantize(np.zeros((1, 32), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    except (AttributeError, NotImplementedError):
        pytest.skip("the installed gguf package cannot quantize q8_0")
    # From the merged model directory (safetensors read tensor by tensor), not from the run.
    path = export_gguf(untied["merged"], tmp_path / "model-q8_0.gguf", type="q8_0")
    model = read_back_model(path)
    assert relative_error(model, tokenizer, untied["reference"]) < TOLERANCE["q8_0"]
    _, tensors = read_gguf(path)
    assert tensors["output.weight"][1] == Q8_0 and not model.config.tie_word_embeddings
    assert tensors["blk.0.attn_q.weight"][1] == Q8_0 and tensors["blk.0.ffn_norm.weight"][1] == F32


def test_bf16_weights_are_the_permuted_merged_weights(tied, tmp_path):
    from legaltune.export.gguf_export import export_gguf, permute_qk

    _, tensors = read_gguf(export_gguf(tied["run"], tmp_path / "m.gguf", type="bf16", merge_dtype="fp32"))
    # merged in fp32 (a bf16 merge would round twice), so each weight is one bf16 rounding away
    state = {k: v.numpy() for k, v in tied["model"].state_dict().items()}
    for name, hf, heads in [("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2), ("attn_v", "v_proj", None)]:
        shape, kind, data = tensors[f"blk.1.{name}.weight"]
        expected = state[f"model.layers.1.self_attn.{hf}.weight"]
        expected = permute_qk(expected, heads) if heads else expected
        assert kind == BF16
        np.testing.assert_allclose(decode(shape, kind, data), expected, rtol=2**-8, atol=0)


@pytest.mark.slow
def test_tokenizer_round_trips_vietnamese_and_chat_template(tied_f16, tokenizer):
    _, _, back = tied_f16
    assert back(VIETNAMESE)["input_ids"] == tokenizer(VIETNAMESE)["input_ids"]
    assert back.decode(back(VIETNAMESE)["input_ids"]) == VIETNAMESE
    assert (back.bos_token_id, back.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert back.chat_template == tokenizer.chat_template
    chat = [{"role": "user", "content": VIETNAMESE}]
    assert back.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(
        chat, tokenize=False
    )


@pytest.mark.slow
def test_metadata(tied_f16, tokenizer):
    import gguf

    meta, _ = read_gguf(tied_f16[0])
    assert meta["general.architecture"] == "llama"
    hparams = dict(context_length=512, embedding_length=64, block_count=2, feed_forward_length=128)
    hparams |= {"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16}
    hparams |= {"rope.freq_base": 1e5, "vocab_size": len(tokenizer), "attention.layer_norm_rms_epsilon": 1e-5}
    assert {k: meta[f"llama.{k}"] for k in hparams} == pytest.approx(hparams)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == [
        tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))
    ]
    assert meta["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # <|endoftext|>, <|im_…|>
    assert meta["tokenizer.ggml.token_type"][1000] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.merges"]) == 48900 and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template


def reference_unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF interleaved → HF halves, written independently of the exporter: row 2i ← i, 2i+1 ← i + d/2."""
    d = weight.shape[0] // n_heads
    order = np.concatenate([h * d + np.r_[np.arange(0, d, 2), np.arange(1, d, 2)] for h in range(n_heads)])
    return weight[order]


def test_permutation_is_invertible_and_interleaves_halves():
    from legaltune.export.gguf_export import permute_qk

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4 * 16, 64))  # 4 heads of dimension 16
    assert np.array_equal(reference_unpermute(permute_qk(weight, 4), 4), weight)
    bias = rng.standard_normal(2 * 16)
    assert np.array_equal(reference_unpermute(permute_qk(bias, 2), 2), bias)
    # one head of 4: rows (a, b | c, d) = halves (a, b), (c, d) → pairs (a, c), (b, d)
    assert permute_qk(np.arange(4.0), 1).tolist() == [0.0, 2.0, 1.0, 3.0]


def test_permutation_turns_rotate_half_rope_into_interleaved_rope():
    """Why the permutation exists: HF's rope on x equals, after permuting, llama.cpp's rope on P(x)."""
    from legaltune.export.gguf_export import permute_qk

    d, position = 8, 5.0
    angle = position / 10000 ** (np.arange(0, d, 2) / d)  # one angle per rotated pair
    x = np.random.default_rng(1).standard_normal(d)
    cos, sin = np.cos(np.tile(angle, 2)), np.sin(np.tile(angle, 2))
    hf = x * cos + np.concatenate([-x[d // 2 :], x[: d // 2]]) * sin  # rotate_half: pairs (i, i + d/2)
    y = permute_qk(x, 1)
    interleaved = np.empty(d)  # llama.cpp's normal RoPE: pairs (2i, 2i + 1)
    interleaved[0::2] = y[0::2] * np.cos(angle) - y[1::2] * np.sin(angle)
    interleaved[1::2] = y[0::2] * np.sin(angle) + y[1::2] * np.cos(angle)
    np.testing.assert_allclose(interleaved, permute_qk(hf, 1), atol=1e-12)


@pytest.mark.slow
def test_without_the_permutation_read_back_logits_differ(tied, tokenizer, tmp_path, monkeypatch):
    from legaltune.export import gguf_arch, gguf_export

    monkeypatch.setattr(gguf_arch, "permute_qk", lambda weight, n_heads: weight)
    path = gguf_export.export_gguf(tied["run"], tmp_path / "unpermuted.gguf", type="f16")
    # The loader un-permutes Q/K, so un-permuted rows scramble attention: measured ≈ 70 % of the scale.
    model = read_back_model(path)
    assert relative_error(model, tokenizer, tied["reference"]) > 10 * TOLERANCE["f16"]


def test_llama3_rope_factors_match_transformers(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from legaltune.export.gguf_export import export_gguf, llama3_rope_factors, rope_parameters

    # original context 64 (not 8192) so that all three regimes occur at head_dim 16
    rope = dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    rope["original_max_position_embeddings"] = 64
    base = make_base(tmp_path / "llama3", tokenizer, rope_parameters=rope)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    factors = llama3_rope_factors(rope_parameters(model.config.to_dict()), 16)
    plain = 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(plain / factors, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0 and ((factors > 1) & (factors < 8)).any()
    meta, tensors = read_gguf(export_gguf(base, tmp_path / "l3.gguf"))
    np.testing.assert_allclose(decode(*tensors["rope_freqs.weight"]), factors)
    assert meta["llama.rope.freq_base"] == 500000.0


def test_non_llama_architecture_is_refused(tmp_path):
    from legaltune.export.gguf_export import export_gguf
    from legaltune.export.merge import ExportError

    model_dir = tmp_path / "mistral"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    )
    with pytest.raises(ExportError, match="MistralForCausalLM.*supports llama .*qwen2 .*gemma3"):
        export_gguf(model_dir, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_refuses_to_overwrite_and_rejects_unknown_type(tied, tmp_path):
    from legaltune.export.gguf_export import export_gguf
    from legaltune.export.merge import ExportError

    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"mine")
    with pytest.raises(ExportError, match="exists"):
        export_gguf(tied["run"], taken)
    assert taken.read_bytes() == b"mine"
    with pytest.raises(ExportError, match="f16, bf16, q8_0"):
        export_gguf(tied["run"], tmp_path / "x.gguf", type="q4_k")


def test_pre_tokenizer_names_for_llama_cpp():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from legaltune.export.gguf_tokenizer import LLAMA3_SPLIT as _LLAMA3_SPLIT
    from legaltune.export.gguf_tokenizer import pre_tokenizer_name as _pre_tokenizer

    def name(pre) -> str:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        return _pre_tokenizer(json.loads(tok.to_str())["pre_tokenizer"])

    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert name(pre_tokenizers.Sequence([split, byte_level])) == "llama-bpe"  # Llama-3.x
    digits = pre_tokenizers.Digits(individual_digits=True)
    assert (
        name(pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel()])) == "smollm"
    )  # SmolLM2's hub tokenizer
    assert (
        name(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    )  # the embedded (GGUF-derived) one
    with pytest.warns(UserWarning, match="unrecognised pre-tokenizer"):
        assert name(pre_tokenizers.Whitespace()) == "default"


def test_tokenizer_kinds_and_sentencepiece_scores():
    from legaltune.export.gguf_tokenizer import merge_scores, tokenizer_kind
    from legaltune.export.merge import ExportError

    assert tokenizer_kind({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}}) == "gpt2"
    gemma = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}}]}
    assert tokenizer_kind({"model": {"type": "BPE", "byte_fallback": True}, "decoder": gemma}) == "llama"
    with pytest.raises(ExportError, match="neither byte-level BPE nor SentencePiece-style") as err:
        tokenizer_kind({"model": {"type": "WordPiece"}, "decoder": {"type": "WordPiece"}})
    assert "'WordPiece'" in str(err.value) and "Gemma 3" in str(err.value)
    # a token's score is minus the rank of the FIRST merge making it: earlier merges score higher
    scores = merge_scores([["▁", "a"], ["b", "c"], "▁a bc", ["▁ab", "c"]])
    assert scores == {"▁a": 0.0, "bc": -1.0, "▁abc": -2.0}
