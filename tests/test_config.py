"""Typed configs: YAML + dotted overrides, and errors that name the key."""

import re

import pytest

from llmscratch.errors import LLMScratchError
from llmscratch.runs.config import load_config
from tests.conftest import TINY_CONFIG


def test_yaml_and_overrides_resolve_to_typed_fields():
    cfg = load_config(TINY_CONFIG, ["train.max_steps=7", "model.n_layer=3", "train.lr=3e-4",
                                    "data.files=a.txt"])
    assert cfg.train.max_steps == 7 and cfg.model.n_layer == 3
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.n_embd == 32  # from the preset named in the file
    assert cfg.data.files == ["a.txt"]


def test_preset_override_replaces_the_model_section():
    cfg = load_config(None, ["model.preset=gpt2-medium"])
    assert (cfg.model.n_layer, cfg.model.n_embd) == (24, 1024)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=5", "unknown config key 'train.max_step'; did you mean 'train.max_steps'"),
        ("trian.lr=1", "unknown config key 'trian.lr'; did you mean 'train'"),
        ("train.max_steps=many", "train.max_steps must be of type int, got 'many'"),
        ("train.max_steps=true", "train.max_steps must be of type int"),
        ("model.preset=gpt5", "unknown model preset 'gpt5'"),
        ("model.n_head=5", "must be divisible by model.n_head=5"),
        ("train.dtype=fp8", "train.dtype must be 'auto', 'bf16' or 'fp32'"),
        ("lr", "must look like section.key=value"),
    ],
)
def test_bad_configs_name_the_key(override, message):
    with pytest.raises(LLMScratchError, match=re.escape(message)):
        load_config(TINY_CONFIG, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(LLMScratchError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
