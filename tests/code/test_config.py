"""params.yaml parsing: defaults, overrides, and errors that name the key."""

import pytest

from kd.config import ConfigError, Params, load_params


def test_missing_file_gives_the_embedded_default(tmp_path):
    p = load_params(tmp_path / "params.yaml")
    assert p.data.source == "sklearn:digits" and p.teacher.mode == "train" and p.distill.losses == {"kd": 1.0}


def test_repository_params_yaml_is_valid():
    p = load_params("params.yaml")
    assert p.registry.model_name == "kd-student"


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("student:\n  trian: {epochs: 3}\n", r"student.trian: unknown key"),
        ("teacher:\n  train: {epochs: many}\n", r"teacher.train.epochs: .*integer.*found 'many'"),
        ("distill:\n  temperature: -1\n", r"distill.temperature: .*greater than 0"),
        ("data:\n  source: xlsx:foo.xlsx\n", r"data.source: .*unknown data source 'xlsx:foo.xlsx'"),
        ("teacher:\n  mode: ensemble\n", r"at least 2 entries in teacher.members"),
        ("distill:\n  losses: {kd: 1, fitnet: 1}\n", r"unknown loss 'fitnet'"),
        ("teacher:\n  model: {arch: transformer}\n", r"unknown architecture 'transformer'"),
        ("- a\n- b\n", r"expected a mapping"),
        ("data: [unclosed\n", r"not valid YAML"),
        ("student:\n  qat: {enabled: true, epochs: 5, freeze_observers_after: 8}\n", r"student.qat: .*freeze_observers_after \(8\) must be at most epochs \(5\)"),
        ("student:\n  qat: {enabled: true}\n  model: {arch: cnn2d}\n", r"student.qat.enabled: supported for mlp students, not 'cnn2d'"),
        ("student:\n  qat: {enabled: true}\ndistill:\n  losses: {kd: 1, rkd: 1}\n", r"student.qat.enabled: works with the output losses .*'rkd'"),
        ("student:\n  qat: {enabled: yes please}\n", r"student.qat.enabled: .*boolean"),
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, expected):
    f = tmp_path / "params.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected):
        load_params(f)


def test_overrides_and_section_hash(tmp_path):
    p = load_params(tmp_path / "none.yaml", ["student.train.epochs=3", "distill.losses={dkd: 1.0}"])
    assert p.student.train.epochs == 3 and p.distill.losses == {"dkd": 1.0}
    q = Params()
    assert q.section_hash("teacher") == Params().section_hash("teacher")
    q.student.train.epochs = 99
    assert q.section_hash("teacher") == Params().section_hash("teacher") and q.section_hash() != Params().section_hash()
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(tmp_path / "none.yaml", ["student.train.epochs"])


def test_configuration_reference_is_current():
    from pathlib import Path

    from kd.config import reference_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md").read_text()
    assert reference_markdown() in doc, "regenerate docs/CONFIGURATION.md with `kd params --reference`"
