"""The config keys' one-line meanings: one source for `mlptrain config --keys` and the config reference's block."""

from __future__ import annotations

from pathlib import Path

import yaml

from mlptrain.base.config import Config, config_keys
from mlptrain.base.keys import MEANINGS, annotated_yaml, key_docs

CONFIG_PAGE = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()


def test_every_key_has_one_line_of_meaning():
    assert list(MEANINGS) == config_keys()
    for doc in key_docs():
        assert doc.meaning and "\n" not in doc.meaning
        assert doc.type


def test_types_and_defaults_read_as_a_person_writes_them():
    docs = {doc.key: doc for doc in key_docs()}
    assert docs["model.activation"].type == "relu | gelu | tanh | sigmoid"
    assert docs["model.hidden"].type == "list of int" and docs["model.hidden"].default == [128, 64]
    assert docs["threads"].type == "int | auto"
    assert docs["train.lr"].type == "float" and docs["train.lr"].default == 0.05


def test_the_annotated_yaml_is_the_default_config():
    assert Config.from_dict(yaml.safe_load(annotated_yaml())) == Config()


def test_the_config_reference_shows_exactly_the_annotated_yaml():
    assert f"```yaml\n{annotated_yaml()}```" in CONFIG_PAGE, "regenerate docs/config.md: python tools/docs.py"
