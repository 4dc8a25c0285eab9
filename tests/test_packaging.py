"""The wheel ships every module and page: pyproject's explicit package list keeps up with gateway/."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from typing import Any

from tests.tenants import REPO


def setuptools_table() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as file:
        table: dict[str, Any] = tomllib.load(file)["tool"]["setuptools"]
    return table


def test_every_folder_of_python_modules_is_a_listed_package() -> None:
    """gateway/web/console once went missing from the wheel: the list is written by hand."""
    listed = set(setuptools_table()["packages"])
    folders = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "gateway").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders - listed == set()


def test_pages_and_assets_are_package_data() -> None:
    patterns = setuptools_table()["package-data"]["gateway.web"]
    web = REPO / "gateway" / "web"
    shipped = [
        path
        for folder in ("templates", "static")
        for path in (web / folder).rglob("*")
        if path.is_file()
    ]
    assert shipped
    for path in shipped:
        relative = path.relative_to(web).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
