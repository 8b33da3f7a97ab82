"""Config schema: every class of bad input is reported with its key path and a fix, all at once."""

from pathlib import Path

import pytest

from legaltune.config.fields import ConfigError
from legaltune.config.load import build_config, load_config, save_config

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))


def problems_of(raw: dict) -> list:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return info.value.problems


def only(raw: dict):
    (p,) = problems_of(raw)
    return p


def test_defaults_follow_seed_003():
    cfg = build_config({})
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.use_rslora, cfg.lora.lora_dropout) == (16, 16, False, 0)
    assert cfg.lora.target_modules == SEVEN
    t = cfg.training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (2, 8)
    assert t.learning_rate == 2e-4 and 1 <= t.num_train_epochs <= 3
    assert t.warmup_steps is None and 0.05 <= t.warmup_ratio <= 0.10
    assert t.lr_scheduler_type in ("linear", "cosine") and t.weight_decay == 0.01
    # where seed 003 is silent, seed 000's values
    assert cfg.model.model_name == "unsloth/Llama-3.1-8B-Instruct" and cfg.model.max_seq_length == 8192
    assert cfg.lora.use_gradient_checkpointing == "unsloth" and cfg.lora.random_state == 3407
    assert (cfg.logging.save_strategy, cfg.logging.eval_strategy, cfg.logging.save_total_limit) == (
        "epoch",
        "epoch",
        3,
    )
    assert cfg.data.dataset_text_field == "text" and cfg.data.packing is False


# Seed 000's run, value by value (§0.1 from_pretrained, §0.2 get_peft_model, §1-§6 the parameters).
SEED_000 = {
    "model": {
        "model_name": "unsloth/Llama-3.1-8B-Instruct",
        "max_seq_length": 8192,
        "dtype": "auto",  # the seed's dtype=None
        "attn_implementation": "flash_attention_2",
        "device_map": "auto",
    },
    "quantization": {"load_in_4bit": False, "load_in_8bit": False},
    "lora": {
        "r": 128,
        "lora_alpha": 256,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "use_rslora": True,
        "use_gradient_checkpointing": "unsloth",
        "random_state": 3407,
    },
    "training": {
        "per_device_train_batch_size": 32,
        "gradient_accumulation_steps": 16,
        "num_train_epochs": 4,
        "learning_rate": 3e-4,
        "warmup_steps": 100,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.01,
    },
    "optimization": {"optim": "adamw_torch", "gradient_checkpointing": True},
    "data": {
        "dataset_text_field": "text",
        "packing": False,
        "dataloader_num_workers": 8,
        "dataloader_pin_memory": True,
    },
    "logging": {
        "logging_steps": 1,
        "save_strategy": "epoch",
        "eval_strategy": "epoch",
        "save_total_limit": 3,
    },
}


def test_h200_preset_says_everything_seed_000_says():
    """Written out in the file, not inherited from defaults (which are seed 003's now)."""
    path = Path(__file__).parent.parent / "configs" / "llama31-8b-h200.yaml"
    import yaml

    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = load_config(path)
    for section, values in SEED_000.items():
        for key, value in values.items():
            assert written[section][key] == value or (
                key == "dtype" and written[section][key] in (None, "auto")
            )
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    assert cfg.training.warmup_ratio is None  # the seed counts warm-up in steps


def test_unknown_key_suggests_the_right_one():
    p = only({"lora": {"lora_alpa": 16}})
    assert p.path == "lora.lora_alpa" and "did you mean 'lora_alpha'" in p.fix


def test_key_in_wrong_section_names_its_section():
    p = only({"lora": {"learning_rate": 1e-4}})
    assert "training.learning_rate" in p.fix


def test_unknown_section():
    p = only({"trainig": {}})
    assert p.path == "trainig" and "did you mean 'training'" in p.fix
    p = only({"learning_rate": 1e-4})
    assert "training" in p.fix


def test_wrong_type_names_expected_type():
    p = only({"training": {"per_device_train_batch_size": "big"}})
    assert p.path == "training.per_device_train_batch_size" and "expected int" in p.message


def test_out_of_range_rank():
    p = only({"lora": {"r": 0}})
    assert p.path == "lora.r" and "> 0" in p.message and "16 or 32" in p.fix


def test_offload_attention_values():
    p = only({"speed": {"offload_attention": -2}})
    assert p.path == "speed.offload_attention" and "negative" in p.message and "layer count" in p.fix
    p = only({"speed": {"offload_attention": "some"}})
    assert p.path == "speed.offload_attention" and "bool | int | 'auto'" in p.message


def test_bad_choice_lists_choices():
    p = only({"training": {"lr_scheduler_type": "cosin"}})
    assert "did you mean 'cosine'" in p.fix and "constant_with_warmup" in p.fix


def test_both_quantizations_contradict():
    p = only({"quantization": {"load_in_4bit": True, "load_in_8bit": True}})
    assert p.path == "quantization.load_in_4bit" and "choose one" in p.fix


def test_warmup_steps_and_ratio_both_set():
    p = only({"training": {"warmup_steps": 10, "warmup_ratio": 0.1}})
    assert "both set" in p.message


def test_warmup_steps_alone_replace_the_default_ratio():
    cfg = build_config({"training": {"warmup_steps": 30}})
    assert cfg.training.warmup_steps == 30 and cfg.training.warmup_ratio is None
    cfg = build_config({"training": {"warmup_ratio": 0.1}})
    assert cfg.training.warmup_steps is None and cfg.training.warmup_ratio == 0.1
    assert build_config({"training": {"warmup_steps": 0}}).training.warmup_ratio is None


def test_alias_and_name_both_set():
    p = only({"lora": {"r": 8, "lora_r": 16}})
    assert "alias" in p.fix


def test_aliases_accepted():
    cfg = build_config({"lora": {"lora_r": 16}, "logging": {"evaluation_strategy": "no"}})
    assert cfg.lora.r == 16 and cfg.logging.eval_strategy == "no"


def test_dtype_spellings_normalised():
    assert build_config({"model": {"dtype": "bf16"}}).model.dtype == "bfloat16"
    assert build_config({"model": {"dtype": "None"}}).model.dtype == "auto"
    assert build_config({"model": {"dtype": None}}).model.dtype == "auto"


def test_exponent_without_dot_is_a_float():
    # PyYAML reads 2e-4 as a string; users mean the number.
    assert build_config({"training": {"learning_rate": "2e-4"}}).training.learning_rate == pytest.approx(2e-4)


def test_gradient_checkpointing_modes():
    for mode in (True, False, "unsloth"):
        raw = {
            "lora": {"use_gradient_checkpointing": mode},
            "optimization": {"gradient_checkpointing": bool(mode)},
        }
        assert build_config(raw).lora.use_gradient_checkpointing == mode
    p = only({"lora": {"use_gradient_checkpointing": "yes"}})
    assert "unsloth" in p.message


def test_checkpointing_contradiction():
    p = only({"optimization": {"gradient_checkpointing": False}})
    assert p.path == "optimization.gradient_checkpointing" and "unsloth" in p.message


def test_strategy_steps_need_step_counts():
    probs = problems_of({"logging": {"save_strategy": "steps", "eval_strategy": "steps"}})
    assert {p.path for p in probs} == {"logging.save_steps", "logging.eval_steps"}


def test_best_model_needs_matching_strategies_and_early_stopping_needs_best():
    p = only({"training": {"load_best_model_at_end": True}, "logging": {"save_strategy": "no"}})
    assert "save_strategy == eval_strategy" in p.message
    p = only({"training": {"early_stopping_patience": 2}})
    assert "load_best_model_at_end" in p.fix


def test_eval_without_eval_data():
    p = only({"data": {"train_file": "x.jsonl"}})
    assert p.path == "logging.eval_strategy" and "val_split" in p.fix
    assert build_config({"data": {"train_file": "x.jsonl", "val_split": 0.1}}).data.val_split == 0.1


def test_target_module_rules():
    assert "empty" in only({"lora": {"target_modules": []}}).message
    assert "all-linear" in only({"lora": {"target_modules": ["all-linear", "q_proj"]}}).message
    assert build_config({"lora": {"target_modules": "q_proj,v_proj"}}).lora.target_modules == [
        "q_proj",
        "v_proj",
    ]


def test_all_problems_reported_together():
    probs = problems_of(
        {
            "lora": {"r": -1, "bias": "some"},
            "quantization": {"load_in_4bit": True, "load_in_8bit": True},
            "training": {"warmup_steps": 5, "warmup_ratio": 0.1, "learning_rate": -1},
            "nope": 1,
        }
    )
    paths = {p.path for p in probs}
    assert {
        "lora.r",
        "lora.bias",
        "quantization.load_in_4bit",
        "training.warmup_steps",
        "training.learning_rate",
        "nope",
    } <= paths


def test_yaml_file_errors_carry_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lora:\n  r: 16\n  r: 32\ntraining:\n  num_train_epoch: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    text = str(info.value)
    assert f"{f}:3: lora.r: key appears twice" in text
    assert f"{f}:5: training.num_train_epoch: unknown key" in text and "num_train_epochs" in text


def test_overrides_apply_and_are_validated(tmp_path):
    cfg = load_config(None, ["lora.r=16", "training.learning_rate=2e-4", "logging.report_to=[none]"])
    assert (
        cfg.lora.r == 16
        and cfg.training.learning_rate == pytest.approx(2e-4)
        and cfg.logging.report_to == ["none"]
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, ["lora.r=-3", "lr=1"])
    text = str(info.value)
    assert "--set: lora.r" in text and "section.key" in text


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets_load_and_carry_a_command(path):
    load_config(path)
    assert "legaltune" in path.read_text(encoding="utf-8").splitlines()[1]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS[0], ["lora.r=8"])
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(saved)
    again.source = cfg.source
    assert again == cfg


def test_a_set_warmup_replaces_the_other_kind_written_in_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  warmup_ratio: 0.1\n", encoding="utf-8")
    cfg = load_config(f, ["training.warmup_steps=0"])
    assert (cfg.training.warmup_steps, cfg.training.warmup_ratio) == (0, None)
    f.write_text("training:\n  warmup_steps: 30\n", encoding="utf-8")
    cfg = load_config(f, ["training.warmup_ratio=0.08"])
    assert (cfg.training.warmup_steps, cfg.training.warmup_ratio) == (None, 0.08)
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, ["training.warmup_steps=3", "training.warmup_ratio=0.1"])
    f.write_text("training:\n  warmup_steps: 30\n  warmup_ratio: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both set"):
        load_config(f)


SECTION_MISTAKES = [
    ("lora", {"r": 0}),
    ("lora", {"use_gradient_checkpointing": "yes"}),
    ("lora", {"target_modules": []}),
    ("lora", {"target_modules": ["all-linear", "q_proj"]}),
    ("quantization", {"load_in_4bit": True, "load_in_8bit": True}),
    ("quantization", {"load_in_8bit": True, "load_in_fp8": True}),
    ("speed", {"offload_attention": -2}),
    ("model", {"dtype": "fp64"}),
    ("training", {"learning_rate": -1.0}),
]


@pytest.mark.parametrize(("section", "values"), SECTION_MISTAKES)
def test_a_section_built_in_code_gets_the_checks_and_messages_of_a_config_file(section, values):
    """Building a section directly (as the seed's API does) reports what a YAML file would."""
    from legaltune.config.schema import SECTIONS

    from_file = problems_of({section: values})
    with pytest.raises(ConfigError) as info:
        SECTIONS[section](**values)
    assert [(p.path, p.message, p.fix) for p in info.value.problems] == [
        (p.path, p.message, p.fix) for p in from_file
    ]


def test_section_rules_keep_every_problem_of_a_file_and_its_lines(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  r: 0\nquantization:\n  load_in_4bit: true\n  load_in_8bit: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = {(p.path, p.line) for p in info.value.problems}
    assert found == {("lora.r", f"{path}:2"), ("quantization.load_in_4bit", f"{path}:4")}


def test_a_section_built_in_code_is_normalised_as_from_a_file():
    from legaltune.config.schema import DataConfig, ModelConfig, SpeedConfig

    assert ModelConfig(dtype="bf16").dtype == "bfloat16"
    assert SpeedConfig(mode=False).mode == "off"
    assert DataConfig(train_file=Path("train.jsonl")).train_file == "train.jsonl"


def test_speed_counts_are_checked_and_each_bad_one_is_named():
    bad = problems_of({"speed": {"forward_tokens": 0, "offload_attention": -1}})
    assert [(p.path, p.message) for p in bad] == [
        ("speed.forward_tokens", "0 tokens is not a forward"),
        ("speed.offload_attention", "-1 layers is negative"),
    ]
    assert build_config({"speed": {"forward_tokens": True}}).speed.forward_tokens == "auto"
    assert build_config({"speed": {"forward_tokens": 4096}}).speed.forward_tokens == 4096
