"""The registries name their entries in tables and import only what a run uses (issue 17: a
conversion's start-up). The tables must agree with the modules they name: every entry imports
and registers exactly the name it is listed under, and every family, source and reader module in
the packages is listed, so a new one is never silently missing. A fresh HF -> HF conversion then
imports one family, one source, one reader and no rich."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from ckptscope.converters import families, sources
from ckptscope.converters.formats import FORMATS
from ckptscope.converters.sources.base import CanonicalSource
from ckptscope.inspectors import formats as readers

FAMILY_PACKAGE = families.__name__
SOURCE_PACKAGE = sources.__name__
READER_PACKAGE = readers.__name__


def _modules(package: object) -> list[str]:
    return [m.name for m in pkgutil.iter_modules(package.__path__)]  # type: ignore[attr-defined]


def test_every_family_entry_registers_its_own_name_and_model_types() -> None:
    for name, model_types in families.MODEL_TYPES.items():
        family = importlib.import_module(f"{FAMILY_PACKAGE}.{name}").FAMILY
        assert (family.name, family.model_types) == (name, model_types)
        assert families.family(name) is family


def test_every_family_module_is_in_the_table() -> None:
    declaring = {m for m in _modules(families) if hasattr(importlib.import_module(f"{FAMILY_PACKAGE}.{m}"), "FAMILY")}
    assert declaring == set(families.MODEL_TYPES)


def test_families_keeps_the_table_order() -> None:
    assert list(families.FAMILIES) == list(families.MODEL_TYPES)
    assert families.supported_model_types() == [t for f in families.FAMILIES.values() for t in f.model_types]


def test_every_source_entry_is_the_source_of_its_kind() -> None:
    for kind in sources.SOURCES:
        cls = sources.source_class(kind)
        assert issubclass(cls, CanonicalSource) and cls.kind == kind


def test_every_source_module_is_in_the_table() -> None:
    defining = set()
    for module_name in _modules(sources):
        module = importlib.import_module(f"{SOURCE_PACKAGE}.{module_name}")
        defining |= {obj.kind for obj in vars(module).values()
                     if isinstance(obj, type) and issubclass(obj, CanonicalSource) and obj.__module__ == module.__name__
                     and "kind" in vars(obj)}
    assert defining == set(sources.SOURCES)


def test_every_reader_module_is_probed() -> None:
    declaring = {m for m in _modules(readers) if hasattr(importlib.import_module(f"{READER_PACKAGE}.{m}"), "READER")}
    assert declaring == set(readers.ORDER)
    assert [r.kind for r in readers.readers()] == [r.kind for r in readers.READERS]


def test_every_writer_entry_resolves() -> None:
    for fmt in FORMATS.values():
        if fmt.writer:
            assert fmt.writer_class().__name__ == fmt.writer.partition(":")[2]


RUNNER = r"""
import json, sys
from ckptscope.app.cli import main
sys.argv = ["ckptscope", "convert", sys.argv[1], sys.argv[2], "--to", "hf", "--json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("ckptscope.", "rich")))))
"""


def test_an_hf_conversion_imports_only_what_it_uses(demo: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(demo / "hf-llama"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=True)
    imported = set(json.loads(proc.stdout.splitlines()[-1]))
    assert (tmp_path / "out" / "config.json").is_file()
    assert {m for m in imported if m.startswith(f"{FAMILY_PACKAGE}.") and m.rpartition(".")[2] in families.MODEL_TYPES} \
        == {f"{FAMILY_PACKAGE}.llama"}
    source_modules = {path.partition(":")[0] for path in sources.SOURCES.values()}
    assert {m.rpartition(".")[2] for m in imported if m.startswith(f"{SOURCE_PACKAGE}.")} & source_modules == {"hf"}
    assert {m.rpartition(".")[2] for m in imported if m.startswith(f"{READER_PACKAGE}.")} == {"hf"}
    assert not {m for m in imported if m == "rich" or m.startswith("rich.")}, "--json output needs no rich"
