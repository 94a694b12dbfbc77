"""One definition of each setting: the scripts' options come from the stage dataclasses (mathsft.settings), and
every option that holds a config setting defaults to config.schema.yaml's default for it, so that a script run by
hand does what a pipeline run with the default config does."""

import argparse
from dataclasses import dataclass, field

import pytest
import yaml

from helpers.workflow import REPO, load_script
from mathsft.generate import ClientSettings, Sampling
from mathsft.settings import add_dataclass_arguments, from_args

SCHEMA = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())

# Each script's options are looked up by name in these schema sections, in this order.
SECTIONS = {
    "generate_sft_data.py": ("teacher", "server"),
    "run_sft_model.py": ("eval", "server"),
    "train_sft.py": ("train",),
    "curate_sft.py": ("curate",),
    "score_trajectories.py": ("reward",),
}
# Options named otherwise than their schema key.
RENAMED = {
    ("generate_sft_data.py", "prompt_template"): "prompt.template",
    ("generate_sft_data.py", "server_arg"): "server.args",
    ("generate_sft_data.py", "reward_timeout_s"): "reward.timeout_s",
    ("run_sft_model.py", "prompt_template"): "prompt.template",
    ("run_sft_model.py", "server_arg"): "server.args",
    ("run_sft_model.py", "reward_timeout_s"): "reward.timeout_s",
}
# Options named as a schema key that hold something else.
NOT_THAT_SETTING = {
    ("run_sft_model.py", "benchmarks"): "eval.benchmarks",  # files; the key names which of data.benchmarks
}
# Options whose "" stands for the schema's null (unset).
EMPTY_FOR_NULL = {("train_sft.py", "revision")}
# How many options of each script are compared at least: a mapped option or key that disappears fails the test.
COMPARED_AT_LEAST = {"generate_sft_data.py": 18, "run_sft_model.py": 15, "train_sft.py": 18, "curate_sft.py": 5,
                     "score_trajectories.py": 1}


def script_parser(script: str) -> argparse.ArgumentParser:
    """The parser of scripts/`script`, from its build_parser()."""
    return load_script(script).build_parser()


def schema_setting(key: str):
    """The schema entry of a dotted key (section.name), or None."""
    section, name = key.split(".")
    return SCHEMA["properties"].get(section, {}).get("properties", {}).get(name)


def mapped_key(script: str, option: str) -> str | None:
    """The schema key an option of `script` holds, or None."""
    if (script, option) in RENAMED:
        return RENAMED[script, option]
    if (script, option) in NOT_THAT_SETTING:
        return None
    return next((f"{section}.{option}" for section in SECTIONS[script] if schema_setting(f"{section}.{option}")),
                None)


@pytest.mark.parametrize("script", sorted(SECTIONS))
def test_every_option_that_holds_a_config_setting_defaults_to_the_schemas_default(script):
    options = {action.dest: action for action in script_parser(script)._actions if action.option_strings}
    for table in (RENAMED, NOT_THAT_SETTING):
        for (name, option), key in table.items():
            if name == script:
                assert option in options, f"{script} has no --{option} any more: update this test's tables"
                assert schema_setting(key) is not None, f"config.schema.yaml has no {key} any more: update the tables"
    compared, wrong = [], []
    for option, action in options.items():
        key = mapped_key(script, option)
        if key is None or action.required:  # a required option has no default; the pipeline passes it
            continue
        setting = schema_setting(key)
        assert "default" in setting, f"config.schema.yaml: {key} has no default"
        expected = "" if (script, option) in EMPTY_FOR_NULL and setting["default"] is None else setting["default"]
        compared.append(option)
        if action.default != expected or isinstance(action.default, bool) != isinstance(expected, bool):
            wrong.append(f"--{option} defaults to {action.default!r}, {key} to {expected!r}")
    assert wrong == [], f"{script}: " + "; ".join(wrong)
    assert len(compared) >= COMPARED_AT_LEAST[script], f"{script}: only {sorted(compared)} compared"


@dataclass(frozen=True, kw_only=True)
class Example:
    count: int = field(metadata={"help": "how many"})
    rate: float = 0.5
    name: str | None = None
    kind: str = field(default="a", metadata={"choices": ("a", "b")})
    enabled: bool = True


def test_a_dataclass_gives_each_field_an_option_of_its_type_default_choices_and_help():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example, defaults={"rate": 0.25})
    args = parser.parse_args(["--count", "3", "--name", "x", "--no-enabled"])
    assert from_args(Example, args) == Example(count=3, rate=0.25, name="x", kind="a", enabled=False)
    assert "how many" in parser.format_help()
    with pytest.raises(SystemExit):  # --count has no default: required
        parser.parse_args([])
    with pytest.raises(SystemExit):
        parser.parse_args(["--count", "1", "--kind", "c"])


def test_settings_are_built_by_field_name_and_options_of_other_names_are_given():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Sampling, exclude=("ignore_eos",))
    add_dataclass_arguments(parser, ClientSettings, exclude=("backoff_base_s", "backoff_max_s"))
    args = parser.parse_args(["--max_tokens", "16", "--seed", "7", "--max_attempts", "2"])
    assert from_args(Sampling, args) == Sampling(samples_per_problem=4, temperature=0.6, top_p=0.95, max_tokens=16,
                                                 seed=7)
    assert from_args(ClientSettings, args, max_attempts=9) == ClientSettings(max_attempts=9)
    with pytest.raises(ValueError, match="no field"):
        from_args(Sampling, args, temprature=0.1)
