"""Config, init-adapter and plan rules of the methods after SFT (no training here)."""

import json

import pytest

from legaltune.config.fields import ConfigError
from legaltune.config.load import build_config, load_config, save_config
from legaltune.config.schema import RL_LEARNING_RATE
from legaltune.plan.core import make_plan
from legaltune.train.init_adapter import InitAdapterError, adopt_lora_settings, resolve_init_adapter


def cfg(**sections):
    raw = {"model": {"model_name": "smollm2-135m-instruct"}, "logging": {"eval_strategy": "no"}}
    for sec, kv in sections.items():
        raw.setdefault(sec, {}).update(kv)
    return build_config(raw)


def problems(**sections):
    with pytest.raises(ConfigError) as err:
        cfg(**sections)
    return {p.path: p for p in err.value.problems}


def test_learning_rate_defaults_to_seed_003s_rl_rate_unless_set():
    assert RL_LEARNING_RATE == 5e-6
    assert cfg(training={"method": "dpo", "init_adapter": "runs/sft"}).training.learning_rate == 5e-6
    assert (
        cfg(training={"method": "grpo", "init_adapter": "x", "learning_rate": 1e-5}).training.learning_rate
        == 1e-5
    )
    assert cfg().training.learning_rate != 5e-6  # sft keeps its own default


def test_resolved_config_of_a_method_run_loads_back_equal(tmp_path):
    c = cfg(training={"method": "grpo", "init_adapter": "runs/sft"}, grpo={"reward_format": 0.25})
    path = save_config(c, tmp_path / "config.yaml")
    again = load_config(path)
    assert again.grpo == c.grpo and again.training == c.training and again.preference == c.preference
    # an SFT run's resolved config lists the (default) method sections too, and still loads
    assert load_config(save_config(cfg(), tmp_path / "sft.yaml")).training.method == "sft"


@pytest.mark.parametrize(
    ("sections", "key", "words"),
    [
        ({"training": {"method": "dpo"}}, "training.init_adapter", "none is named"),
        ({"training": {"method": "grpo"}}, "training.init_adapter", "none is named"),
        ({"training": {"init_adapter": "runs/x"}}, "training.init_adapter", "sft trains a new one"),
        ({"training": {"method": "ppo"}}, "training.method", "not a valid value"),
        ({"preference": {"beta": 0.5}}, "preference.beta", "only used by training.method dpo / orpo"),
        (
            {"training": {"method": "dpo", "init_adapter": "x"}, "grpo": {"num_generations": 2}},
            "grpo.num_generations",
            "only used",
        ),
        (
            {
                "training": {"method": "grpo", "init_adapter": "x", "per_device_train_batch_size": 2},
                "grpo": {"num_generations": 3},
            },
            "grpo.num_generations",
            "does not divide",
        ),
        (
            {"training": {"method": "grpo", "init_adapter": "x"}, "grpo": {"max_completion_length": 9000}},
            "grpo.max_completion_length",
            "no room for the prompt",
        ),
        (
            {
                "training": {"method": "grpo", "init_adapter": "x"},
                "grpo": {"reward_citation": 0, "reward_exists": 0, "reward_supported": 0, "reward_format": 0},
            },
            "grpo.reward_citation",
            "every reward weight is 0",
        ),
        (
            {"training": {"method": "dpo", "init_adapter": "x"}, "data": {"packing": True}},
            "data.packing",
            "packing is for sft",
        ),
        (
            {"training": {"method": "orpo"}, "lora": {"target_modules": ["q_proj", "lm_head"]}},
            "lora.target_modules",
            "lm_head",
        ),
        (
            {"preference": {"beta": 0}, "training": {"method": "dpo", "init_adapter": "x"}},
            "preference.beta",
            "must be > 0",
        ),
    ],
)
def test_method_problems_name_their_key(sections, key, words):
    found = problems(**sections)
    assert key in found, found
    assert words in found[key].message and found[key].fix


def test_orpo_may_start_from_a_new_adapter():
    assert cfg(training={"method": "orpo"}).training.init_adapter is None


def _adapter(dir_, **lora):
    dir_.mkdir(parents=True)
    conf = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["v_proj", "q_proj"], **lora}
    (dir_ / "adapter_config.json").write_text(json.dumps(conf))
    return dir_


def test_init_adapter_is_a_run_directory_or_an_adapter(tmp_path):
    run = tmp_path / "sft"
    _adapter(run / "adapter")
    (run / "config.yaml").write_text("model:\n  model_name: smollm2-135m-instruct\n")
    c = cfg(training={"method": "dpo", "init_adapter": str(run)})
    found = resolve_init_adapter(c)
    assert found.path == run / "adapter" and found.run_dir == run
    c2 = cfg(training={"method": "dpo", "init_adapter": str(run / "adapter")})
    assert resolve_init_adapter(c2).run_dir == run
    notices = adopt_lora_settings(c, found)
    assert c.lora.r == 8 and c.lora.lora_alpha == 16 and c.lora.target_modules == ["q_proj", "v_proj"]
    assert any(n.startswith("lora.r:") for n in notices)


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("missing", "does not exist"),
        ("unfinished run", "no adapter/ yet"),
        ("empty dir", "holds no adapter_config.json"),
        ("other model", "was trained on 'other/model'"),
        ("not lora", "PREFIX_TUNING adapter"),
    ],
)
def test_bad_init_adapter_says_what_and_how(tmp_path, layout, words):
    target = tmp_path / "sft"
    if layout == "unfinished run":
        target.mkdir()
        (target / "config.yaml").write_text("model: {}\n")
    elif layout == "empty dir":
        target.mkdir()
    elif layout == "other model":
        _adapter(target / "adapter")
        (target / "config.yaml").write_text("model:\n  model_name: other/model\n")
    elif layout == "not lora":
        _adapter(target, peft_type="PREFIX_TUNING")
    c = cfg(training={"method": "dpo", "init_adapter": str(target)})
    with pytest.raises(InitAdapterError) as err:
        resolve_init_adapter(c)
    msg = str(err.value)
    assert msg.startswith("training.init_adapter:") and words in msg and "fix:" in msg


def _arch_plan(**sections):
    c = cfg(model={"max_seq_length": 1024}, **sections)
    return make_plan(c, gpu_memory=80 * 2**30, train_examples=100, micro_batch=(2, 512))


def test_dpo_plan_counts_two_rows_per_pair_and_the_reference_adapter():
    sft = _arch_plan()
    dpo = _arch_plan(training={"method": "dpo", "init_adapter": "x"})
    assert dpo.memory.tokens_per_micro_batch == 2 * sft.memory.tokens_per_micro_batch
    ref = [k for k in dpo.memory.components if k.startswith("reference")]
    assert ref and dpo.memory.components[ref[0]] == pytest.approx(dpo.params.trainable * 4.0)
    assert any("2 rows per pair" in n for n in dpo.memory.notes)
    orpo = _arch_plan(training={"method": "orpo"})
    assert not any(k.startswith("reference") for k in orpo.memory.components)


def test_grpo_plan_adds_the_sampling_kv_cache():
    batch = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    plan = _arch_plan(training={"method": "grpo", "init_adapter": "x", **batch})
    gen = [k for k in plan.memory.components if k.startswith("generation")]
    assert gen and gen[0].endswith(": KV cache of 8 sampled answers × 512 tokens")
    a = plan.arch
    kv = 2 * a.layers * a.kv_heads * a.head_dim * 512 * 8 * 2  # K and V, 16-bit
    assert plan.memory.components[gen[0]] == pytest.approx(kv + 8 * a.vocab * 8.0)
    assert not any(k.startswith("reference") for k in plan.memory.components)  # beta 0: no reference
    with_kl = _arch_plan(training={"method": "grpo", "init_adapter": "x"}, grpo={"beta": 0.04})
    assert any(k.startswith("reference") for k in with_kl.memory.components)


def test_learning_rate_lint_uses_the_rl_range_for_methods_after_sft():
    lr_lints = [
        lint
        for lint in _arch_plan(training={"method": "dpo", "init_adapter": "x", "learning_rate": 2e-4}).lints
        if lint.key == "training.learning_rate"
    ]
    assert lr_lints and "5e-06 for reinforcement learning" in lr_lints[0].reason
    default = _arch_plan(training={"method": "dpo", "init_adapter": "x"})
    assert not [lint for lint in default.lints if lint.key == "training.learning_rate"]
