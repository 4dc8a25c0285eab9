"""Drop-ins beside the built-ins: the repository's own plugins folder (or a copy of the same code)
loads nothing twice; a drop-in with other code under a built-in's name replaces it."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from gateway.hooks import Hooks
from gateway.plugins import make_plugin_manager
from tests.conftest import REPO


def names(folder: Path | None) -> list[str]:
    return [name for name, _ in make_plugin_manager(folder).list_name_plugin()]


def test_the_repository_plugins_folder_loads_nothing_twice() -> None:
    assert names(REPO / "plugins") == names(None)
    hooks = Hooks(make_plugin_manager(REPO / "plugins"))
    assert sorted(hooks.sources()) == ["beds24", "channex"]
    assert hooks.source_owners == {"beds24": "beds24", "channex": "channex"}


def test_a_copy_of_the_same_code_is_skipped(tmp_path: Path) -> None:
    # What a deployment from a checkout with a (non-editable) wheel installed has: the folder's
    # files are not the installed ones, but they are the same code.
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")
    (tmp_path / "plugins" / "channex" / "notes.md").write_text("not code")
    assert names(tmp_path / "plugins") == names(None)


def test_other_code_under_a_builtin_name_replaces_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "plugins" / "channex"
    shutil.copytree(REPO / "plugins" / "channex", copy)
    init = copy / "__init__.py"
    init.write_text(
        init.read_text().replace('name = "channex"', 'name = "channex"\n    custom = True')
    )
    pm = make_plugin_manager(tmp_path / "plugins")
    loaded = [name for name, _ in pm.list_name_plugin()]
    assert "channex" not in loaded and "gateway_plugins.channex" in loaded
    assert "replaces the built-in plugin channex" in caplog.text
    hooks = Hooks(pm)
    source = hooks.sources()["channex"]
    assert getattr(source, "custom", False) is True
    assert hooks.source_owners["channex"] == "gateway_plugins.channex"
    # The copy's relative imports and bundled samples are its own.
    assert source.samples["booking"].body["event"] == "booking"  # type: ignore[attr-defined]


def test_the_core_imports_no_vendor_plugin() -> None:
    """Each PMS lives in its plugin package: nothing under gateway/ may import one."""
    vendors = {"gateway_channex", "gateway_beds24", "channex", "beds24"}
    found = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [f"{path}: {name}" for name in names if name.split(".")[0] in vendors]
    assert found == []
