"""Config validation: the default config loads; bad configs fail naming key and value."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import yaml

from pipeline.config.__main__ import _leaves, main, reference_markdown
from pipeline.config.audit import check_self_contained
from pipeline.config.files import canonical_json, config_hash, read_yaml
from pipeline.config.load import check_rewards, load
from pipeline.config.schema import SCHEMA_PATH, ConfigError, coerce_strings, load_schema, with_schema_defaults
from pipeline.config.types import MethodConfig, StudyConfig
from tests.conftest import REPO


def default_raw() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_loads():
    cfg = load(default_raw())
    assert cfg.dataset.source.kind == "generated"
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///")


def _set(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        # unknown key
        ("dataset.curation.sed", 1, "'dataset.curation.sed': unknown key"),
        ("extra_top_level", 1, "'extra_top_level': unknown key"),
        # wrong type
        ("dataset.source.generator.n_train", "many", "'dataset.source.generator.n_train': 'many'"),
        # out of range
        ("dataset.source.generator.n_train", -5, "-5 is less than the minimum of 1"),
        (
            "dataset.source.generator.heldout_fraction",
            1.0,
            "'dataset.source.generator.heldout_fraction': 1.0",
        ),
        # not one of the allowed values
        ("dataset.source.kind", "web", "'dataset.source.kind': 'web'"),
        # pattern: the refused file store
        ("mlflow.tracking_uri", "file:///tmp/mlruns", "'mlflow.tracking_uri': 'file:///tmp/mlruns'"),
        # bad name characters
        ("study", "my study", "'study': 'my study'"),
    ],
)
def test_bad_values_name_key_and_value(path, value, expected):
    with pytest.raises(ConfigError) as error:
        load(_set(default_raw(), path, value), source="test.yaml")
    assert expected in str(error.value)
    assert "test.yaml" in str(error.value)


def test_a_method_whose_groups_hold_one_image_is_refused_unless_it_branches():
    """One root and no branching: every group's advantage is 0 and the run trains nothing."""
    with pytest.raises(ConfigError, match=r"'methods.flow_grpo.roots' \(1\) with no branch_steps"):
        load(_set(default_raw(), "methods.flow_grpo.roots", 1), source="test.yaml")
    one_root_tree = _set(default_raw(), "methods.tree_grpo.roots", 1)
    assert load(one_root_tree).methods["tree_grpo"].roots == 1  # it branches: groups of siblings


def test_missing_required_key():
    raw = default_raw()
    del raw["dataset"]
    with pytest.raises(ConfigError, match="'dataset' is a required property"):
        load(raw)


def test_files_source_requires_paths():
    raw = _set(default_raw(), "dataset.source.kind", "files")
    with pytest.raises(ConfigError, match="'files' is a required property"):
        load(raw)


def test_missing_input_file_names_the_key(tmp_path):
    raw = _set(default_raw(), "dataset.source.kind", "files")
    raw = _set(
        raw, "dataset.source.files", {"train": str(tmp_path / "nope.txt"), "test": str(tmp_path / "t.txt")}
    )
    with pytest.raises(ConfigError, match=r"'dataset.source.files.train': file .*nope.txt"):
        load(raw)


def test_word_length_bounds_are_ordered():
    raw = _set(default_raw(), "dataset.source.generator.word_min_len", 7)
    with pytest.raises(ConfigError, match="word_min_len' \\(7\\) is greater than word_max_len"):
        load(raw)


def test_template_channels_need_the_position_map():
    raw = _set(default_raw(), "model.mini.position_map_channels", 0)
    with pytest.raises(ConfigError, match="'model.mini.cell_coordinates' \\(True\\) needs the char"):
        load(raw)
    raw = _set(raw, "model.mini.cell_coordinates", False)
    with pytest.raises(ConfigError, match="'model.mini.template_channels' \\(4\\) needs the char"):
        load(raw)
    load(_set(raw, "model.mini.template_channels", 0))


def test_several_errors_are_all_reported():
    raw = _set(_set(default_raw(), "dataset.curation.seed", -1), "mlflow.experiment", "")
    message = str(pytest.raises(ConfigError, load, raw).value)
    assert "dataset.curation.seed" in message and "mlflow.experiment" in message


def _schema_keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, sub in schema.get("properties", {}).items():
        keys.add(prefix + name)
        keys |= _schema_keys(sub, f"{prefix}{name}.")
    return keys


def _dataclass_keys(cls, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        keys.add(prefix + field.name)
        factory = field.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            keys |= _dataclass_keys(factory, f"{prefix}{field.name}.")
    return keys


def test_dataclasses_mirror_the_schema():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema_keys = _schema_keys(schema)
    reward_sections = {key for key in schema_keys if key.startswith("rewards.") and key != "rewards.score"}
    # train.seed is one run's seed, set by the workflow from train.seeds, never by a study config;
    # rewards.sections holds the reward sections as stated, each mirrored by its reward's class.
    assert schema_keys - reward_sections == _dataclass_keys(StudyConfig) - {"train.seed", "rewards.sections"}
    from pipeline.rewards import REWARDS

    with_settings = {name: reward.settings_class for name, reward in REWARDS.items() if reward.settings_class}
    fields = {key for name, cls in with_settings.items() for key in _dataclass_keys(cls, f"rewards.{name}.")}
    assert reward_sections == fields | {f"rewards.{name}" for name in with_settings}
    method_schema = schema["properties"]["methods"]["additionalProperties"]
    assert set(method_schema["properties"]) == {f.name for f in dataclasses.fields(MethodConfig)}


def test_the_old_single_training_seed_says_what_replaced_it():
    raw = _set(default_raw(), "train.seed", 3)
    with pytest.raises(ConfigError, match=r"'train.seed' is now 'train.seeds'.*seeds: \[3\]"):
        load(raw)


def test_every_shipped_config_is_valid():
    """Whole configs on their own; an overlay (without every top-level key) merged onto
    config.yaml, as Snakemake merges a --configfile."""
    for path in [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]:
        assert main([str(path), "--no-paths"]) == 0, path


def test_canonical_json_is_order_independent():
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a":{"c":3,"d":2},"b":1}'
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rewards.score", ["ocr", "beauty"]),
        ("train.reward_weights", {"ocr": 1.0, "beauty": 0.5}),
        ("train.z_weights", {"beauty": 1.0}),
        ("train.std_floor", {"beauty": 0.1}),
    ],
)
def test_unknown_reward_name_in_config(key, value):
    """The schema takes any name; the registry decides, checked when the DAG is built."""
    from pipeline.rewards import REWARDS

    cfg = load(_set(default_raw(), key, value))
    with pytest.raises(ConfigError, match=f"'{key}': unknown reward 'beauty' \\(rewards: ocr, "):
        check_rewards(cfg, REWARDS)


def test_the_config_command_checks_reward_names(tmp_path):
    path = tmp_path / "overlay.yaml"
    path.write_text(
        "study: x\nmlflow: {}\ndataset: {source: {kind: generated}}\nrewards: {score: [beauty]}\n"
    )
    assert main([str(path), "--no-paths"], rewards={"ocr": object}) == 1
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.config", str(path), "--no-paths"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "unknown reward 'beauty'" in result.stdout


def _schema_leaves():
    return list(_leaves(load_schema()))


def test_every_key_has_one_default_and_a_meaning_in_the_schema():
    leaves = dict(_schema_leaves())
    assert len(leaves) > 90
    assert not [key for key, node in leaves.items() if not str(node.get("description", "")).strip()]
    # Every dataclass default is the schema's (the dataclasses read them from it).
    from pipeline.rewards import REWARDS

    defaults = StudyConfig(study="x")
    method = MethodConfig()
    for key, node in leaves.items():
        node_value = node["default"]
        if key.startswith("methods.NAME."):
            value = getattr(method, key.rsplit(".", 1)[1])
        elif key.count(".") == 2 and key.startswith("rewards."):  # a reward's own settings class
            _, name, field = key.split(".")
            value = getattr(REWARDS[name].read_settings({}), field)
        else:
            value = defaults
            for part in key.split("."):
                value = getattr(value, part)
        assert (list(value) if isinstance(value, tuple) else value) == node_value, key


def test_the_default_study_states_the_defaults():
    """config.yaml is the default study: every key it states holds the schema's default, but for
    the study's own names; so a key left out of a study config means what config.yaml says."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    identity = {"mlflow.experiment", "report.title"}
    differ = []
    for key, node in _schema_leaves():
        value = raw
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if key.startswith("methods.") or key in identity or value == {} and node["default"] != {}:
            continue
        if value != node["default"]:
            differ.append(f"{key}: config.yaml {value!r}, schema {node['default']!r}")
    assert not differ, "\n".join(differ)


def test_the_key_reference_is_generated_from_the_schema():
    docs = (REPO / "docs" / "config.md").read_text()
    assert docs == reference_markdown(), (
        "regenerate: python -m pipeline.config --reference > docs/config.md"
    )
    assert "| `train.edge_fraction` | `1.0` |" in docs


@pytest.mark.parametrize(
    ("key", "value"),
    [("rewards.score", ["pickscore"]), ("train.reward_weights", {"ocr": 1.0, "pickscore": 1.0})],
)
def test_pickscore_without_local_model_names_the_key(key, value):
    """Scored or only trained: its folder (Reward.local_folders) is checked before any job."""
    from pipeline.rewards import REWARDS

    cfg = load(_set(default_raw(), key, value))
    with pytest.raises(
        ConfigError, match="'rewards.pickscore.model_dir': local folder '' does not exist"
    ):
        check_rewards(cfg, REWARDS)


def test_reward_settings_build_every_reward_option():
    from pipeline.rewards import build_rewards

    cfg = load(default_raw())
    rewards = build_rewards(list(cfg.rewards.score), cfg.rewards.sections)
    assert rewards["color"].temperature == cfg.rewards.sections["color"]["temperature"]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"branch_steps": [1, 3], "branch_factors": [2]}, "2 branch_steps but 1 branch_factors"),
        ({"branch_steps": [9], "branch_factors": [2]}, "'methods.bad.branch_steps': \\[9\\] must be below"),
        ({"mixing": "average"}, "'methods.bad.mixing': 'average' is invalid"),
    ],
)
def test_bad_methods(method, expected):
    raw = _set(default_raw(), "methods", {"bad": method})
    with pytest.raises(ConfigError, match=expected):
        load(raw)


def test_sde_window_fits_the_steps_and_holds_every_branch_step():
    raw = _set(default_raw(), "train.sde_steps", 11)
    with pytest.raises(ConfigError, match="'train.sde_steps' \\(11\\) is more than sampling"):
        load(raw)
    raw = _set(default_raw(), "train.sde_steps", 3)
    raw["methods"]["tree_grpo"] |= {"branch_steps": [1, 3], "branch_factors": [2, 2]}  # branches at step 3
    with pytest.raises(ConfigError, match="'methods.tree_grpo.branch_steps': \\[1, 3\\] must lie"):
        load(raw)
    load(_set(raw, "train.sde_steps", 4))
    load(default_raw())  # one SDE step, trees branching at step 0


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("train.gpus", 3, r"'train.gpus': the ranks, train.gpus \(3\) = 3, must divide .*iteration \(16\)"),
        ("train.nodes", 3, r"train.gpus \(1\) x train.nodes \(3\) = 3, must divide .*iteration \(16\)"),
        ("train.reward_weights", {"ocr": 0.0, "color": 0}, "'train.reward_weights': every weight is 0"),
        ("train.learning_rate", float("nan"), r"'train.learning_rate' \(nan\): numbers must be finite"),
        ("train.learning_rate", float("inf"), r"'train.learning_rate' \(inf\): numbers must be finite"),
        ("model.mini.max_text_len", 5, r"'model.mini.max_text_len' \(5\) is shorter than .*word_max_len = 6"),
        ("methods", {}, "'methods' is empty"),
    ],
)
def test_configs_that_used_to_fail_late_fail_at_load(path, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load(_set(default_raw(), path, value))


def test_yaml_reading_names_duplicate_keys_and_syntax_errors(tmp_path):
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text("train:\n  iterations: 3\n  seed: 1\n  iterations: 4\n")
    with pytest.raises(
        ConfigError, match=r"duplicate.yaml, line 4: duplicate key 'iterations' \(first at line 2\)"
    ):
        read_yaml(duplicate)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  iterations: [3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line 3, column 1: YAML syntax error"):
        read_yaml(broken)
    assert read_yaml(REPO / "config.yaml") == default_raw()


def test_command_line_strings_are_read_as_the_schema_types():
    raw = {
        "report": {"grid_prompts": "6", "title": "7"},
        "train": {"learning_rate": "1e-4", "train_last_step": "true", "guidance": "abc", "iterations": "2.5"},
        "model": {"path": "null"},
        "evaluation": {"seeds": ["0", "1"]},
        "methods": {"flow_grpo": {"roots": "8", "branch_steps": ["1"]}},
    }
    out = coerce_strings(raw)
    assert out["report"] == {"grid_prompts": 6, "title": "7"}  # a string stays a string where one is wanted
    assert out["train"] == {
        "learning_rate": 1e-4,
        "train_last_step": True,
        "guidance": "abc",
        "iterations": "2.5",
    }
    assert out["model"]["path"] is None
    assert out["evaluation"]["seeds"] == [0, 1]
    assert out["methods"]["flow_grpo"] == {"roots": 8, "branch_steps": [1]}


def test_yaml_aliases_are_refused_before_anything_walks_them(tmp_path):
    """A 9-level alias bomb (9^9 nodes if expanded) is refused at once, naming file and line."""
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines[0] = lines[0].replace("a0:", "a0: &a0")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ConfigError, match=r"bomb.yaml, line 2: YAML alias \*a0: aliases are not allowed"
    ):
        read_yaml(bomb)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.config", str(bomb)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "aliases are not allowed" in result.stdout


@pytest.mark.parametrize(
    ("key", "value"), [("study", "tiny\n"), ("dataset.name", "data\n"), ("methods", {"m\n": {}})]
)
def test_names_with_a_trailing_newline_are_refused(key, value):
    with pytest.raises(ConfigError, match="does not match"):
        load(_set(default_raw(), key, value))


def test_effective_listing_marks_the_keys_an_overlay_takes_from_config_yaml(tmp_path, capsys):
    path = tmp_path / "overlay.yaml"
    path.write_text("study: x\ntrain: {iterations: 3}\n")
    assert main([str(path), "--no-paths", "--effective", "--base", str(REPO / "config.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train.iterations: 3" in lines  # stated: not marked
    assert f"train.gpus: 1  << {REPO / 'config.yaml'}" in lines
    # Keys config.yaml leaves to the schema show too, with the schema's default.
    assert f'methods.flow_grpo.aggregate: "mean"  << {REPO / "config.yaml"}' in lines
    # Sections the study does not use are not listed: the mini study reads no local files.
    assert not any(line.startswith("dataset.source.files.") for line in lines)


def test_a_self_contained_overlay_may_take_no_used_key_from_config_yaml():
    effective = with_schema_defaults(read_yaml(REPO / "config.yaml") | {"self_contained": True})
    stated = copy.deepcopy(effective)
    check_self_contained(effective, stated, "x.yaml")  # everything stated: fine
    del stated["train"]["gpus"], stated["methods"]["tree_grpo"]["branch_factors"]
    with pytest.raises(ConfigError, match=r"x.yaml: self_contained, yet 2 keys .*train.gpus \(1\), "):
        check_self_contained(effective, stated, "x.yaml")
    # A method the study does not run, or a reward section no used reward reads, may stay unstated.
    effective["run_methods"] = stated["run_methods"] = ["flow_grpo"]
    stated["train"]["gpus"] = 1
    del stated["rewards"]["color"]["temperature"]
    with pytest.raises(ConfigError, match="rewards.color.temperature"):
        check_self_contained(effective, stated, "x.yaml")
    effective["rewards"]["score"] = stated["rewards"]["score"] = ["ocr"]
    for weights in ("reward_weights", "std_floor"):
        effective["train"][weights] = stated["train"][weights] = {"ocr": 1.0}
    check_self_contained(effective, stated, "x.yaml")
