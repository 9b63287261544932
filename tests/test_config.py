"""Recipe validation: unknown keys rejected, every error names the key path, what was expected and what was given."""
from pathlib import Path

import pytest

from ondevice.config import Recipe, apply_override, dump_toml, load_recipe, recipe_from_dict
from ondevice.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"teacher": {"model": "ccexam_mnist_cnn"}, "student": {"model": "mnist_small_cnn"}, "data": {"dataset": "mnist"}}


def _with(**sections):
    d = {k: dict(v) for k, v in BASE.items()}
    for k, v in sections.items():
        d[k] = v
    return d


def test_minimal_recipe_gets_defaults():
    r = recipe_from_dict(BASE)
    assert r.train.epochs == 5 and r.distill.baseline is True
    assert [l.name for l in r.distill.losses] == ["ce", "kd"]


def test_unknown_key_is_rejected_with_its_path_and_the_valid_keys():
    with pytest.raises(ConfigError, match=r"data\.datset: unknown key; valid keys here: .*dataset"):
        recipe_from_dict(_with(data={"dataset": "mnist", "datset": "x"}))


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"trian: unknown key; valid keys here: .*train"):
        recipe_from_dict({**BASE, "trian": {"epochs": 1}})


def test_wrong_type_says_expected_and_got():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got 'five'"):
        recipe_from_dict(_with(train={"epochs": "five"}))


def test_literal_choices_are_listed():
    with pytest.raises(ConfigError, match=r"train\.optimizer: expected one of 'adamw', 'adam' or 'sgd', got 'rmsprop'"):
        recipe_from_dict(_with(train={"optimizer": "rmsprop"}))


def test_range_errors_and_missing_sections():
    with pytest.raises(ConfigError, match=r"train\.lr: expected a value greater than 0, got -1"):
        recipe_from_dict(_with(train={"lr": -1}))
    with pytest.raises(ConfigError, match=r"teacher: required key is missing"):
        recipe_from_dict({"student": {"model": "x"}, "data": {"dataset": "mnist"}})


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as ei:
        recipe_from_dict(_with(train={"epochs": 0, "batch_size": "big"}))
    paths = [p for p, _ in ei.value.problems]
    assert paths == ["train.epochs", "train.batch_size"]


def test_list_index_in_path():
    with pytest.raises(ConfigError, match=r"export\.targets\[1\]\.precisions: expected a list"):
        recipe_from_dict(_with(export={"targets": [{"target": "onnxruntime"}, {"target": "tflite", "precisions": "fp32"}]}))


def test_student_train_section_is_refused():
    with pytest.raises(ConfigError, match="student.train/student.augment are not used"):
        recipe_from_dict(_with(student={"model": "x", "train": {"epochs": 1}}))


def test_toml_and_yaml_load_to_the_same_recipe(tmp_path):
    (tmp_path / "r.toml").write_text(
        'name = "t"\n[teacher]\nmodel = "a"\n[student]\nmodel = "b"\n[data]\ndataset = "digits"\n'
        '[train]\nepochs = 2\n[[distill.losses]]\nname = "kd"\nweight = 1.0\ntemperature = 8\n')
    (tmp_path / "r.yaml").write_text(
        "name: t\nteacher: {model: a}\nstudent: {model: b}\ndata: {dataset: digits}\ntrain: {epochs: 2}\n"
        "distill:\n  losses:\n    - {name: kd, weight: 1.0, temperature: 8}\n")
    a, b = load_recipe(tmp_path / "r.toml"), load_recipe(tmp_path / "r.yaml")
    assert a == b
    assert a.distill.losses[0].params() == {"temperature": 8}


def test_parse_errors_name_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[teacher\nmodel = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot parse TOML"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"expected a \.toml, \.yaml or \.yml recipe, got '\.json'"):
        load_recipe(tmp_path / "r.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


def test_overrides_are_typed_and_validated(tmp_path):
    (tmp_path / "r.toml").write_text('[teacher]\nmodel = "a"\n[student]\nmodel = "b"\n[data]\ndataset = "digits"\n')
    r = load_recipe(tmp_path / "r.toml", ["train.epochs=3", "output_dir=runs/x", "train.lr=0.5"])
    assert (r.train.epochs, r.output_dir, r.train.lr) == (3, "runs/x", 0.5)
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got 'many'"):
        load_recipe(tmp_path / "r.toml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override({}, "train.epochs")


def test_resolved_toml_round_trips():
    r = recipe_from_dict(_with(export={"targets": [{"target": "onnxruntime", "precisions": ["fp32", "int8_static"]}]},
                               teacher={"model": "mlp", "kwargs": {"hidden": [32, 16]}, "train": {"epochs": 2}}))
    import tomllib

    assert Recipe.model_validate(tomllib.loads(dump_toml(r.to_dict()))) == r


def test_section_hash_tracks_only_named_sections():
    a = recipe_from_dict(BASE)
    b = recipe_from_dict(_with(bench={"mode": "full"}))
    c = recipe_from_dict(_with(train={"epochs": 9}))
    assert a.section_hash("train", "data") == b.section_hash("train", "data")
    assert a.section_hash("train", "data") != c.section_hash("train", "data")


def test_section_hash_ignores_settings_left_at_their_default():
    """A setting a later version adds (data.augment.hflip) must not invalidate checkpoints written before it."""
    a = recipe_from_dict(BASE)
    explicit = recipe_from_dict(_with(data={**BASE["data"], "augment": {"shift": 0, "hflip": False}}))
    flipped = recipe_from_dict(_with(data={**BASE["data"], "augment": {"hflip": True}}))
    assert a.section_hash("teacher", "data", "seed") == explicit.section_hash("teacher", "data", "seed")
    assert a.section_hash("teacher", "data", "seed") != flipped.section_hash("teacher", "data", "seed")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_validate(path):
    load_recipe(path)


def test_names_are_resolved_before_any_work_with_key_paths_and_valid_names():
    from ondevice.config import check_references

    r = recipe_from_dict({
        "teacher": {"model": "ccexam_mnist_cnnn"}, "student": {"model": "mnist_small_cnn"}, "data": {"dataset": "mnistt"},
        "distill": {"losses": [{"name": "kd", "temprature": 3}]},
        "export": {"targets": [{"target": "coreml", "precisions": ["int8_static"]}, {"target": "tflit"}]},
    })
    with pytest.raises(ConfigError) as ei:
        check_references(r)
    msg = str(ei.value)
    assert "teacher.model: unknown model 'ccexam_mnist_cnnn'; valid models: " in msg
    assert "Did you mean 'ccexam_mnist_cnn'?" in msg
    assert "data.dataset: unknown dataset 'mnistt'; valid datasets: digits, fashion-mnist, idx, mnist, mnist1d" in msg
    assert "distill.losses[0].temprature: unknown parameter for loss 'kd'" in msg
    assert "export.targets[0].precisions[0]: target 'coreml' cannot produce 'int8_static'; it can do: fp32" in msg
    assert "export.targets[1].target: unknown target 'tflit'; valid targets: coreml, executorch, onnxruntime, tflite" in msg


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_reference_real_names(path):
    from ondevice.config import check_references

    check_references(load_recipe(path))


def test_unknown_device_profile_is_named_with_the_valid_ones():
    from ondevice.config import check_references

    r = recipe_from_dict(_with(bench={"profiles": ["phone"]}, gates={"profile": "mcu"}))
    with pytest.raises(ConfigError, match=r"bench\.profiles\[0\]: unknown device profile 'phone'; built-in profiles: "
                                          r"flagship_phone_cpu, mcu, midrange_phone_cpu, npu_1w"):
        check_references(r)


def test_override_null_unsets_an_optional_value(tmp_path):
    from ondevice.config import load_recipe

    p = tmp_path / "r.toml"
    p.write_text('[teacher]\nmodel = "mlp"\n[teacher.train]\nepochs = 2\n[student]\nmodel = "mlp"\n'
                 '[data]\ndataset = "digits"\n')
    assert load_recipe(p).teacher.train.epochs == 2
    assert load_recipe(p, ["teacher.train=null"]).teacher.train is None
    assert load_recipe(p, ["name=nullable"]).name == "nullable"  # only the bare word means "unset"
