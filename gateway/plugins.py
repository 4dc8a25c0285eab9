"""make_plugin_manager(): default plugins, then the "gateway" entry points, then drop-in files."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pluggy

from gateway import hookspecs

DEFAULT_PLUGINS: tuple[str, ...] = ("gateway.default_plugins.sandbox",)
ENTRY_POINT_GROUP = "gateway"
# Drop-ins are imported as gateway_plugins.<file stem>.
DROP_IN_PACKAGE = "gateway_plugins"


class PluginError(Exception):
    """A plugin could not be loaded; the message names the file or entry point."""


def make_plugin_manager(plugins_dir: Path | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        raise PluginError(f"entry point plugin in group {ENTRY_POINT_GROUP!r}: {exc}") from exc
    if plugins_dir is not None:
        load_drop_ins(pm, plugins_dir)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def load_drop_ins(pm: pluggy.PluginManager, directory: Path) -> None:
    """Import every ``*.py`` in ``directory`` as a module (not ``exec``), so it behaves like any
    other module: pydantic models, dataclasses and pickling work."""
    if not directory.is_dir():
        raise PluginError(f"{directory}: plugins directory does not exist")
    sys.modules.setdefault(DROP_IN_PACKAGE, types.ModuleType(DROP_IN_PACKAGE))
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"{DROP_IN_PACKAGE}.{path.stem}"
        if pm.has_plugin(module_name):
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"{path}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            pm.register(module, name=module_name)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"{path}: {type(exc).__name__}: {exc}") from exc
