"""``gateway serve --workers N``: N gateway processes sharing one listening socket.

The parent binds the socket once and starts N ``gateway serve --listen-fd`` children that inherit
it; the kernel hands each connection to one of them. Every child is a whole gateway (ingest,
processing, delivery) on the shared PostgreSQL store. SIGTERM or SIGINT to the parent is passed on
to every child, which stops cleanly (in-flight work finished or released); the parent exits once
they all have. A child that dies later is started again; one that fails at start-up stops them all.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STARTUP_WINDOW = 10.0  # seconds: a child failing sooner has a problem a restart won't fix
RESTART_DELAY = 1.0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, inheritable by the children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, config_file: Path, workers: int, sock: socket.socket, grace: float) -> None:
        self.config_file = config_file
        self.workers = workers
        self.sock = sock
        self.grace = grace
        self.children: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False

    def command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(self.config_file),
            "--listen-fd",
            str(self.sock.fileno()),
            "--process-name",
            f"worker-{index}",
        ]

    def spawn(self, index: int) -> None:
        child = subprocess.Popen(self.command(index), pass_fds=(self.sock.fileno(),))
        self.children[index] = (child, time.monotonic())

    def run(self) -> int:
        """Start the children and watch them until told to stop; returns the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.workers):
                self.spawn(index)
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_children()
            self.sock.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _watch(self) -> int:
        while not self.stopping:
            for index, (child, started) in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                if time.monotonic() - started < STARTUP_WINDOW and code != 0:
                    log.error("worker %d exited with %d while starting; stopping", index, code)
                    self.stopping = True
                    self._stop_children()
                    return code if code > 0 else 1
                log.warning(
                    "worker %d (pid %d) exited with %d; starting it again", index, child.pid, code
                )
                time.sleep(RESTART_DELAY)
                self.spawn(index)
            time.sleep(0.2)
        return self._stop_children()

    def _stop_children(self) -> int:
        """SIGTERM every child still running and wait (SIGKILL after the grace); 0 when every
        child stopped cleanly."""
        for child, _ in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 15
        worst = 0
        for child, _ in self.children.values():
            try:
                code = child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            # A child stopped by our own SIGTERM before it installed its handlers is clean too.
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                worst = code if code > 0 else 1
        self.children.clear()
        return worst
