"""make_plugin_manager(): default plugins, then the "gateway" entry points, then drop-ins.

The built-in Channex and Beds24 sources are entry points of this package (their code lives in the
top-level ``plugins/`` folder), so they load exactly like a third-party plugin. A drop-in folder may
hold ``*.py`` modules and packages (folders with ``__init__.py``). A config naming the repository's
own ``plugins/`` folder must not load the built-ins twice, so a drop-in named like a loaded plugin
(``channex``, ``beds24``) is skipped when it is that plugin's code: the very file (an editable
install) or the same Python files byte for byte (the wheel built from that folder). A drop-in of
that name with other code replaces the built-in, as a template overrides one by name.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import pluggy

from gateway import hookspecs

log = logging.getLogger(__name__)

DEFAULT_PLUGINS: tuple[str, ...] = ("gateway.sandbox",)
ENTRY_POINT_GROUP = "gateway"
# Drop-ins are imported as gateway_plugins.<file stem or folder name>.
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


def _loaded_files(pm: pluggy.PluginManager) -> set[Path]:
    files: set[Path] = set()
    for plugin in pm.get_plugins():
        file = getattr(plugin, "__file__", None)
        if isinstance(file, str):
            files.add(Path(file).resolve())
    return files


def _code(path: Path) -> dict[str, bytes]:
    """A drop-in's Python files by relative path: the module itself, or a package's tree."""
    if path.name != "__init__.py":
        return {path.name: path.read_bytes()}
    root = path.parent
    return {
        str(file.relative_to(root)): file.read_bytes()
        for file in sorted(root.rglob("*.py"))
        if "__pycache__" not in file.parts
    }


def _same_code(drop_in: Path, plugin: object) -> bool:
    file = getattr(plugin, "__file__", None)
    if not isinstance(file, str):
        return False
    loaded = Path(file)
    if (drop_in.name == "__init__.py") != (loaded.name == "__init__.py"):
        return False
    return _code(drop_in) == _code(loaded)


def drop_in_files(directory: Path) -> list[Path]:
    """The drop-ins in ``directory``: ``*.py`` modules and packages, names not starting with _."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_file() and path.suffix == ".py":
            found.append(path)
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append(path / "__init__.py")
    return found


def load_drop_ins(pm: pluggy.PluginManager, directory: Path) -> None:
    """Import every drop-in as a module (not ``exec``), so it behaves like any other module:
    pydantic models, dataclasses, pickling and relative imports inside a package work."""
    if not directory.is_dir():
        raise PluginError(f"{directory}: plugins directory does not exist")
    sys.modules.setdefault(DROP_IN_PACKAGE, types.ModuleType(DROP_IN_PACKAGE))
    already = _loaded_files(pm)
    for path in drop_in_files(directory):
        if path.resolve() in already:
            log.debug("%s: already loaded as a built-in plugin", path)
            continue
        is_package = path.name == "__init__.py"
        stem = path.parent.name if is_package else path.stem
        module_name = f"{DROP_IN_PACKAGE}.{stem}"
        if pm.has_plugin(module_name):
            continue
        builtin = pm.get_plugin(stem)
        if builtin is not None:
            if _same_code(path, builtin):
                log.debug("%s: the same code as the built-in plugin %s", path, stem)
                continue
            log.warning("%s replaces the built-in plugin %s (their code differs)", path, stem)
            pm.unregister(name=stem)
        spec = importlib.util.spec_from_file_location(
            module_name,
            path,
            submodule_search_locations=[str(path.parent)] if is_package else None,
        )
        if spec is None or spec.loader is None:
            raise PluginError(f"{path}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        # A package loaded again (another manager, another folder) must not reuse old submodules.
        for name in [name for name in sys.modules if name.startswith(f"{module_name}.")]:
            del sys.modules[name]
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            pm.register(module, name=module_name)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"{path}: {type(exc).__name__}: {exc}") from exc
