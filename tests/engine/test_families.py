"""The family registry: one entry per family module, asked by every other part of the engine."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

from vlmnb.cli import tiny as tiny_cli
from vlmnb.engine import families, tiny
from vlmnb.engine.families.base import Family


def test_every_family_module_is_registered_once_under_its_own_name():
    package = importlib.import_module("vlmnb.engine.families")
    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "base")
    assert sorted(families.NAMES) == modules
    for name in modules:
        entry = importlib.import_module(f"vlmnb.engine.families.{name}").FAMILY
        assert isinstance(entry, Family) and entry.name == name and families.get(name) is entry
        assert entry.model_types and callable(entry.geometry) and callable(entry.build_tiny)
        # the book's "Supported models" page and the reference-size geometry tests need these
        assert entry.hub_ids and all(h.count("/") == 1 for h in entry.hub_ids), name
        assert callable(entry.reference_sizes), name


def test_the_other_lists_are_the_registry(capsys):
    assert tiny.FAMILIES == families.NAMES
    assert tiny_cli.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(families.NAMES)


def test_lookup_errors_name_the_supported_families():
    with pytest.raises(ValueError, match="unknown family 'blip2'.*llava.*gemma3"):
        families.get("blip2")

    class Config:
        model_type = "blip_2"

    with pytest.raises(ValueError, match="unsupported model_type 'blip_2'"):
        families.detect(Config())
    Config.model_type = "qwen2_5_vl"
    assert families.detect(Config()).mrope and not families.get("llava").mrope
