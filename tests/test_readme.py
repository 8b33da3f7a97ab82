"""The README's config reference is generated from the schema; this keeps them in sync."""

from pathlib import Path

from legaltune.config.docs import END, START, render_reference, replace_in

README = Path(__file__).parent.parent / "README.md"


def test_config_reference_in_sync():
    text = README.read_text(encoding="utf-8")
    assert replace_in(text) == text, "run: python -m legaltune.config.docs --write"


def test_reference_documents_every_seed_parameter():
    ref = render_reference()
    seed_keys = (
        "model_name max_seq_length dtype load_in_4bit load_in_8bit attn_implementation device_map r / lora_r "
        "lora_alpha lora_dropout bias target_modules use_rslora use_gradient_checkpointing random_state "
        "per_device_train_batch_size gradient_accumulation_steps num_train_epochs learning_rate warmup_steps "
        "warmup_ratio lr_scheduler_type weight_decay optim gradient_checkpointing dataloader_num_workers "
        "dataloader_pin_memory logging_steps save_strategy eval_strategy / evaluation_strategy save_total_limit "
        "dataset_text_field packing"
    )
    for key in seed_keys.replace(" / ", "/").split():
        assert f"`{key.replace('/', ' / ')}`" in ref, key
    assert START in README.read_text(encoding="utf-8") and END in README.read_text(encoding="utf-8")
