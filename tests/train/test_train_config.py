"""Experiment configs: --config overrides by field type, whole-config validation, resume changes."""
import pytest

from neojax.cli import UsageError
from neojax.evaluate.task import SAMPLES
from neojax.train.config import apply_overrides, base_config, check_config, config_changes, load_experiment
from neojax.train.schema import ConfigError


def test_overrides_take_the_field_type_lists_included():
    c = apply_overrides(base_config(), [("eval.hooks", '["valid_loss","tasks"]'), ("eval.tasks", "lambada_openai,piqa"),
                                        ("train.total_steps", "12"), ("optimizer.lr", "1e-3"),
                                        ("checkpoint.async_save", "false"), ("mesh", "data=1"),
                                        ("model.overrides.num_layers", "4"), ("data.source_args.paths", "a/*.txt")])
    assert list(c.eval.hooks) == ["valid_loss", "tasks"] and list(c.eval.tasks) == ["lambada_openai", "piqa"]
    assert c.train.total_steps == 12 and c.optimizer.lr == 1e-3 and c.checkpoint.async_save is False
    assert c.model.overrides.num_layers == 4 and c.data.source_args.paths == "a/*.txt" and c.mesh == "data=1"


def test_override_errors_name_the_key():
    with pytest.raises(UsageError, match="did you mean train.total_steps"):
        apply_overrides(base_config(), [("train.totl_steps", "3")])
    with pytest.raises(UsageError, match="--config.train.total_steps=x: expected an int"):
        apply_overrides(base_config(), [("train.total_steps", "x")])
    with pytest.raises(UsageError, match="expected a list"):
        apply_overrides(base_config(), [("eval.hooks", "{}")])


def test_every_shipped_experiment_validates():
    from neojax.train.config import experiments
    for name in experiments():
        c = load_experiment(name)
        c.model.init_from = ""  # the fine-tuning experiments name /models/... a user provides
        c.model.preset = c.model.preset or "gpt-neo-125M"
        c.data.tokenizer = ""
        c.distill.teacher = ""
        c.objective = "lm" if c.objective == "distill" else c.objective
        if "bias_report" in c.eval.hooks:
            c.eval.task_data_dir = SAMPLES  # the suites' sample records that ship with neojax
        if c.data.source in ("jsonl", "text_files", "chat"):
            c.data.source = "stdlib"
            c.data.source_args = {}
        check_config(c)


def test_check_config_lists_every_problem_one_line_each():
    c = base_config()
    c.train.total_steps, c.checkpoint.keep, c.optimizer.lr = 0, 0, -1.0
    with pytest.raises(ConfigError) as e:
        check_config(c)
    lines = str(e.value).splitlines()
    assert lines == ["config.optimizer.lr=-1.0: must be a finite number > 0 (the learning rate)",
                     "config.train.total_steps=0: must be an integer >= 1",
                     "config.checkpoint.keep=0: must be an integer >= 1"]
    assert str(e.value.for_flags()).splitlines() == ["--" + line for line in lines]  # the command line's wording


def test_the_schema_builds_the_defaults_and_checks_every_declared_key():
    from neojax.train import schema
    declared = dict(schema.fields())
    c = base_config()
    assert set(declared) == {k for k in _flat_keys(c.to_dict())}  # every key has one declaration, and only those
    assert all(c_value == declared[k].default for k, c_value in _flat_items(c.to_dict()))
    assert schema.problems(c.to_dict()) == []
    assert base_config().eval.hooks is not c.eval.hooks  # defaults are fresh copies, never shared
    for key, field in declared.items():  # a value of the wrong type is caught wherever a key has a check
        if field.check is not None and not isinstance(field.default, (list, tuple)):
            assert field.check(object()) is not None, key
    assert schema.integer(1)(True) and schema.number(0, 1)(float("nan")) and schema.choice("a", "b")("c")


def _flat_items(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in ("model.overrides", "data.source_args"):
            yield from _flat_items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _flat_keys(d):
    return [k for k, _ in _flat_items(d)]


def test_config_changes_allow_cadence_refuse_data_and_note_rates():
    a = base_config().to_dict()
    b = base_config()
    b.train.total_steps, b.checkpoint.every_steps, b.mesh = 5000, 7, "data=2"
    assert config_changes(a, b.to_dict()) == ([], [])
    b.data.seed, b.optimizer.lr = 3, 1e-4
    refused, noted = config_changes(a, b.to_dict())
    assert refused == ["data.seed: 0 -> 3"] and noted == ["optimizer.lr: 0.0003 -> 0.0001"]
    # a workdir saved before a key joined the schema resumes while that key keeps its default
    older = {k: v for k, v in a.items() if k != "classify"}
    assert config_changes(older, base_config().to_dict()) == ([], [])
    b = base_config()
    b.classify.train = "x.jsonl"
    assert config_changes(older, b.to_dict())[0] == ['classify.train: null -> "x.jsonl"']
