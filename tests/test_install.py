"""The gateway as a product: the wheel installed into a fresh virtual environment and the single-file
zipapp each run from an empty folder, with no plugins or templates folder, and serve a Channex
push end to end. Slow (they build and install); `.ci/run` runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.octo_schema import validate_octo
from tests.test_cli import free_port
from tests.test_cli_operations import http, wait_for

REPO = Path(__file__).resolve().parent.parent
# The README's command for the single file (README "Single file" shows it verbatim).
PYZ_COMMAND = "mkdir -p dist && shiv -c gateway -o dist/gateway.pyz --compressed ."

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


SKIPPED_DIRS = {".git", "__pycache__", "build", "dist", ".venv", ".mypy_cache", ".ruff_cache"}


def source_files() -> list[str]:
    """The repository's files as a fresh clone has them (tracked, or new and not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what .gitignore keeps
        return sorted(
            str(path.relative_to(REPO))
            for path in REPO.rglob("*")
            if path.is_file()
            and not SKIPPED_DIRS & set(path.relative_to(REPO).parts)
            and not any(part.endswith(".egg-info") for part in path.parts)
            and path.suffix not in (".pyc", ".db", ".db-wal", ".db-shm")
        )
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository to build from: a build writes build/ and *.egg-info beside the
    sources, and tests running at the same time must not see that in the working tree."""
    tree = tmp_path_factory.mktemp("source") / "octo-gateway"
    for name in source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(source_tree: Path) -> Path:
    """The gateway's wheel, built beside the wheels of its dependencies (from PyPI or the pip
    cache) as the Dockerfile's build stage does."""
    run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", "wheels", "."], cwd=source_tree)
    [built] = (source_tree / "wheels").glob("octo_gateway-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel and its dependencies and nothing else, installed
    offline from those wheels as the Dockerfile's final stage does."""
    env_dir = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(env_dir)], cwd=env_dir.parent)
    pip = [str(env_dir / "bin" / "pip"), "install", "--quiet", "--no-index"]
    run([*pip, "--find-links", str(wheel.parent), "octo-gateway"], cwd=env_dir.parent)
    return env_dir


def test_the_dockerfile_installs_as_this_test_does() -> None:
    """docs/deploy.md shows the Dockerfile, whose pip steps the fixtures above run."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "RUN pip wheel --no-cache-dir --wheel-dir /wheels ." in dockerfile
    assert "pip install --no-cache-dir --no-index --find-links /wheels octo-gateway" in dockerfile
    shown = (REPO / "docs" / "deploy.md").read_text().split("```dockerfile\n")[1].split("```")[0]
    assert dockerfile.endswith(shown)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let the repository's own code be imported."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "GATEWAY_CONFIG", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not part.startswith(sys.prefix)
    )
    return {**env, **extra}


def starter(folder: Path, port: int) -> Path:
    """A config naming no plugins or templates folder: the built-ins must do."""
    config = folder / "gateway.toml"
    config.write_text(
        f"""
[server]
port = {port}

[storage]
path = "gateway.db"

[delivery]
allow_private_targets = true
retry_schedule = [1, 1]

[ingest]
poll_interval = 0.2

[sandbox]
enabled = true

[[api_keys]]
name = "reseller"
key = "reseller-key-0001"

[[api_keys]]
name = "admin"
key = "admin-key-0001"
admin = true

[sources.channex]
token = "channex-token-0001"
api_url = "sandbox"

[sources.beds24]
token = "beds24-token-0001"
api_url = "sandbox"
"""
    )
    return config


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # a zipapp unpacks itself on its first start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"gateway did not become healthy: {log.read_text()}")


def serve_and_push(gateway: list[str], folder: Path, env: dict[str, str]) -> None:
    """``gateway serve`` in ``folder`` (its ./gateway.toml), a subscription to the sandbox
    receiver, a Channex sample pushed with ``gateway push-sample``: the push is answered 200,
    processed, and a schema-valid OCTO booking reaches the receiver."""
    port = free_port()
    starter(folder, port)
    plugins = json.loads(run([*gateway, "plugins", "--json"], cwd=folder, env=env))
    by_name = {plugin["name"]: plugin for plugin in plugins}
    assert set(by_name) == {"gateway.sandbox", "channex", "beds24"}
    assert by_name["channex"]["sources"] == ["channex"]
    assert by_name["beds24"]["sources"] == ["beds24"]

    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*gateway, "serve"], cwd=folder, env=env, stdout=out, stderr=out)
    try:
        wait_healthy(port, proc, log)
        base = f"http://127.0.0.1:{port}"
        http(
            "POST",
            f"{base}/octo/webhooks",
            {"url": f"{base}/sandbox/receiver", "event": "booking_update"},
            key="reseller-key-0001",
        )
        answer = json.loads(
            run([*gateway, "push-sample", "channex", "booking"], cwd=folder, env=env)
        )

        def processed() -> Any:
            push = http("GET", f"{base}/admin/pushes/{answer['id']}", key="admin-key-0001")
            return push if push["state"] == "processed" else None

        wait_for(processed, timeout=60)
        received = wait_for(lambda: http("GET", f"{base}/sandbox/receiver"), timeout=60)
        booking = received[0]["body"]["booking"]
        validate_octo("Booking", booking)
        assert booking["status"] == "CONFIRMED"
        assert received[0]["webhook-signature"].startswith("v1,")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_the_wheel_ships_every_file_of_its_packages(wheel: Path) -> None:
    """Every file under a shipped folder is in the wheel, and every plugin folder is shipped: a
    module or a data file left out would only show on a machine without the repository."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = config["package-dir"]
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    shipped_folders = set(package_dir.values())
    for folder in (REPO / "plugins").iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            assert f"plugins/{folder.name}" in shipped_folders, f"{folder} is not in the wheel"
    missing = []
    for name in source_files():
        for package, folder in package_dir.items():
            if name.startswith(f"{folder}/"):
                shipped = f"{package}/{name.removeprefix(folder + '/')}"
                if shipped not in in_wheel:
                    missing.append(f"{name} (as {shipped})")
    assert not missing, f"not in the wheel: {missing}"
    assert any(name.endswith("/LICENSE") for name in in_wheel)


def test_installed_wheel_serves_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    env = clean_env()
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import gateway, gateway_channex, gateway_templates as t; print(gateway.__file__);"
            " print(gateway_channex.__file__); print(t.__file__)",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert all(line.startswith(str(venv)) for line in where.split()), where
    empty = tmp_path / "site"
    empty.mkdir()
    serve_and_push([str(venv / "bin" / "gateway")], empty, env)


def test_shipped_config_naming_the_repository_folders_loads_nothing_twice(
    venv: Path, tmp_path: Path
) -> None:
    """An existing deployment's config (the shipped one, naming the repository's plugins/ and
    templates/) with the installed wheel: the built-ins load once, and it checks out."""
    text = (REPO / "gateway.toml").read_text()
    text = text.replace('dir = "plugins"', f'dir = "{REPO / "plugins"}"')
    text = text.replace('dir = "templates"', f'dir = "{REPO / "templates"}"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    gateway = str(venv / "bin" / "gateway")
    env = clean_env()
    plugins = json.loads(
        run([gateway, "plugins", "--json", "--config", str(config)], cwd=tmp_path, env=env)
    )
    assert sorted(plugin["name"] for plugin in plugins) == ["beds24", "channex", "gateway.sandbox"]
    checked = run([gateway, "check", "--config", str(config)], cwd=tmp_path, env=env)
    assert "ok (sources: beds24, channex)" in checked


@pytest.fixture(scope="module")
def zipapp(source_tree: Path) -> Path:
    """dist/gateway.pyz, built by the README's command in a fresh copy of the sources."""
    tools = Path(sys.executable).parent
    assert (tools / "shiv").exists(), "shiv is missing: pip install -e '.[test]' installs it"
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
    run(["bash", "-c", PYZ_COMMAND], cwd=source_tree, env=env)
    return source_tree / "dist" / "gateway.pyz"


def test_readme_documents_the_zipapp_command() -> None:
    assert PYZ_COMMAND in (REPO / "README.md").read_text()


def test_the_zipapp_runs_with_only_the_standard_library(zipapp: Path, tmp_path: Path) -> None:
    # -I -S: no site-packages at all, only the standard library and what the file carries.
    env = clean_env(SHIV_ROOT=str(tmp_path / "shiv-root"))
    bare = run(
        [sys.executable, "-I", "-S", "-c", "import sys; print(sys.path)"], cwd=tmp_path, env=env
    )
    assert "site-packages" not in bare
    empty = tmp_path / "site"
    empty.mkdir()
    shutil.copy2(zipapp, empty / "gateway.pyz")
    serve_and_push([sys.executable, "-I", "-S", "gateway.pyz"], empty, env)
