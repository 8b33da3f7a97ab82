"""How well a base model knows Vietnamese legal text: bits per character on the bundled answers.

For every answer of a data file (``answer`` of legal QA records, every assistant turn of chats):

- ``raw``: ``-log2 p(answer)`` after the BOS token alone, over the answer's characters;
- ``chat``: the same answer as the model sees it in training: after legaltune's system prompt and
  the question in the model's chat format (its own template, or legaltune's built-in one), the
  end-of-turn token excluded;

and characters per token of the model's tokenizer on those answers. Bits per character compare
models with different tokenizers; lower is better. CPU, fp32, no adapter.

    python3 benchmarks/vi_bpc.py --models smollm2-135m-instruct gemma-3-270m --out docs/results/vi_bpc.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from legaltune.config.schema import ModelConfig, QuantizationConfig
from legaltune.data.format import ChatFormatter
from legaltune.model.load import load_model


def conversations(path: Path, system: str) -> list[list[dict[str, str]]]:
    """One conversation per answer: the turns before it and the answer as the last message."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "messages" in rec:
            msgs = [m for m in rec["messages"] if m["role"] != "system"]
            for k, m in enumerate(msgs):
                if m["role"] == "assistant":
                    out.append([{"role": "system", "content": system}, *msgs[: k + 1]])
        else:
            out.append(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": rec["question"]},
                    {"role": "assistant", "content": rec["answer"]},
                ]
            )
    return out


@torch.no_grad()
def _nll_bits(model: Any, ids: list[int], first_scored: int, last_scored: int) -> float:
    """Bits of tokens ids[first_scored:last_scored] given everything before them."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
    targets = x[0, first_scored:last_scored]
    return -logp[first_scored - 1 : last_scored - 1].gather(1, targets[:, None]).sum().item() / math.log(2)


def measure(alias: str, convos: list[list[dict[str, str]]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, tok = load_model(
        ModelConfig(model_name=alias, dtype="float32", device_map="cpu", attn_implementation="sdpa",
                    max_seq_length=4096),
        QuantizationConfig(),
    )  # fmt: skip
    model.eval()
    fmt = ChatFormatter(tok)
    chars = tokens = 0
    raw_bits = chat_bits = 0.0
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else [tok.eos_token_id]
    for convo in convos:
        answer = convo[-1]["content"]
        ans_ids = tok(answer, add_special_tokens=False)["input_ids"]
        chars += len(answer)
        tokens += len(ans_ids)
        raw_bits += _nll_bits(model, bos + ans_ids, 1, 1 + len(ans_ids))
        prefix = fmt.render(convo[:-1], add_generation_prompt=True)
        text = prefix + answer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
        chat_bits += _nll_bits(model, ids, n_prefix, len(ids))
    return {
        "model": alias,
        "parameters": sum(p.numel() for p in model.parameters()),
        "answers": len(convos),
        "characters": chars,
        "chars_per_token": round(chars / tokens, 3),
        "bpc_raw": round(raw_bits / chars, 4),
        "bpc_chat": round(chat_bits / chars, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    from legaltune.config.schema import DataConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    ap.add_argument("--data", default="data/vi_legal_qa/eval.jsonl")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N answers (Gemma 3 270M: ~14 CPU-seconds each)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    convos = conversations(Path(args.data), DataConfig().system_prompt)
    if args.limit is not None:
        print(f"the first {min(args.limit, len(convos))} of {len(convos)} answers", flush=True)
        convos = convos[: args.limit]
    rows = []
    for alias in args.models:
        rows.append(measure(alias, convos))
        print(json.dumps(rows[-1], ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"data": args.data, "limit": args.limit, "rows": rows}, ensure_ascii=False, indent=2)
            + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
