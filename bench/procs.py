"""Child processes: servers under test, receivers and load generators.

Everything measured runs in its own process so that no two parts share an event loop or a GIL:
the numbers then describe what a deployment sees, and the harness itself stays out of the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment children run in: the repository importable, no proxies for loopback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.pop("GATEWAY_CONFIG", None)
    return env


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a live process (``VmHWM``), in MB (10^6 bytes)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU time a live process (or one of its threads) has used so far."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ServerProcess:
    """A long-running child (gateway, floor server, receiver) that answers HTTP on loopback."""

    def __init__(self, name: str, args: list[str], log_path: Path, port: int) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None
        # Read just before stopping (a dead process has no /proc entry to read them from).
        self.final_rss_mb: float | None = None
        self.final_cpu_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    async def start(self, ready_path: str, timeout: float = 30.0) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdout=self._log,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
            env=child_env(),
            cwd=str(REPO),
        )
        await self._wait_ready(ready_path, timeout)

    async def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + path) as answer:
                        if answer.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} not ready after {timeout} s; see {self.log_path}"
                    )
                await asyncio.sleep(0.05)

    def peak_rss_mb(self) -> float | None:
        return vm_hwm_mb(self.pid) if self.proc is not None else None

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid) if self.proc is not None else None

    def main_thread_cpu_seconds(self) -> float | None:
        """The main thread's share (the gateway's event loop; the rest is its store threads)."""
        return cpu_seconds(self.pid, self.pid) if self.proc is not None else None

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the gateway's graceful stop), then SIGKILL if it takes too long."""
        if self.proc is not None and self.proc.returncode is None:
            self.final_rss_mb = self.peak_rss_mb()
            self.final_cpu_s = self.cpu_seconds()
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_json(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a generator to completion and return the JSON object on its last stdout line, with
    the CPU seconds it used (``cpu_s``): a generator near one CPU-second per second of run may
    be the bottleneck; one well below it is not."""
    cpu_before = _children_cpu()
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=child_env(),
        cwd=str(REPO),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{args[0]} ran longer than {timeout} s") from None
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(args[:4])}... exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result["cpu_s"] = _children_cpu() - cpu_before
    return result
