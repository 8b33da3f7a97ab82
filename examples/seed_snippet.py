"""Seed 000's §0.1 / §0.2 / §0.3 snippets, run as written on the embedded model.

Only the import lines and ``model_name`` differ from the seed (the seed loads
unsloth/Llama-3.1-8B-Instruct from the hub; here the embedded SmolLM2-135M-Instruct runs offline).
The tiny dataset and the 3-step TrainingArguments are ours, so this finishes on a 2-core CPU in one
to two minutes: ``python examples/seed_snippet.py``.
"""

from __future__ import annotations

import tempfile
import time

import torch
from datasets import Dataset

from legaltune import FastLanguageModel, SFTTrainer, TrainingArguments

SYSTEM = "Trợ lý pháp lý tiếng Việt."
# Short on purpose: on a CPU the cost of the 3 steps is the tokens, not the seed's caps (8192, r=128).
QA = [
    ("Nghỉ phép năm bao nhiêu ngày?", "12 ngày (Điều 113 BLLĐ 2019)."),
    ("Thử việc tối đa bao lâu?", "180 ngày (Điều 25 BLLĐ 2019)."),
    ("Tuổi kết hôn của nam?", "Đủ 20 tuổi (Điều 8 Luật HN&GĐ 2014)."),
    ("Tuổi kết hôn của nữ?", "Đủ 18 tuổi (Điều 8 Luật HN&GĐ 2014)."),
    ("Thời hiệu khởi kiện hợp đồng?", "03 năm (Điều 429 BLDS 2015)."),
    ("Tuổi thành niên?", "Đủ 18 tuổi (Điều 20 BLDS 2015)."),
    ("Lãi suất vay tối đa?", "20%/năm (Điều 468 BLDS 2015)."),
    ("Giờ làm việc mỗi ngày?", "Không quá 08 giờ (Điều 105 BLLĐ 2019)."),
    ("Nghỉ thai sản bao lâu?", "06 tháng (Điều 139 BLLĐ 2019)."),
    ("Hợp đồng xác định thời hạn tối đa?", "36 tháng (Điều 20 BLLĐ 2019)."),
    ("Di chúc miệng hợp lệ khi nào?", "Khi không lập được di chúc văn bản (Điều 629 BLDS 2015)."),
    ("Hàng thừa kế thứ nhất gồm ai?", "Vợ, chồng, cha, mẹ, con (Điều 651 BLDS 2015)."),
    ("Báo trước khi chấm dứt hợp đồng không thời hạn?", "45 ngày (Điều 36 BLLĐ 2019)."),
    ("Tội trộm cắp tài sản?", "Điều 173 BLHS 2015."),
    ("Thời hạn đất nông nghiệp?", "50 năm (Điều 172 Luật Đất đai 2024)."),
    ("Tuổi làm thẻ căn cước?", "Đủ 14 tuổi (Điều 19 Luật Căn cước 2023)."),
]


def main() -> None:
    start = time.perf_counter()
    # --- seed §0.1 -------------------------------------------------------------------------------
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name="smollm2-135m-instruct",
        max_seq_length=8192,
        dtype=None,
        load_in_4bit=False,
        attn_implementation="flash_attention_2",
        device_map="auto",
    )

    # --- seed §0.2 -------------------------------------------------------------------------------
    model = FastLanguageModel.get_peft_model(
        model,
        r=128,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_alpha=256,
        lora_dropout=0.0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        use_rslora=True,
        max_seq_length=8192,
    )

    # Ours: ~16 Vietnamese legal QA records in the tokenizer's chat template, as the seed's "text" column.
    def to_text(q: str, a: str) -> dict[str, str]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        messages.append({"role": "assistant", "content": a})
        return {"text": tokenizer.apply_chat_template(messages, tokenize=False)}

    records = [to_text(q, a) for q, a in QA]
    datasets = {"train": Dataset.from_list(records[:14]), "val": Dataset.from_list(records[14:])}
    cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="legaltune-seed-snippet-"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=2e-4,
        warmup_ratio=0.1,  # the seed's old names, translated for transformers 5
        evaluation_strategy="no",
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=True,
        report_to="none",
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
    )

    # --- seed §0.3 -------------------------------------------------------------------------------
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("val"),
        dataset_text_field="text",
        packing=False,
        args=training_args,
        max_seq_length=8192,
    )

    result = trainer.train()
    print(
        f"done: {trainer.state.global_step} steps, train loss {result.training_loss:.3f}, "
        f"checkpointing={model.legaltune_checkpointing}, {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
