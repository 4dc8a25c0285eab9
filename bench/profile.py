"""Profiles of the gateway under bench load: py-spy attached to a gateway child, and a summary.

``python -m bench --profile DIR`` attaches ``py-spy record`` (when installed: ``pip install
py-spy``) to every gateway the phases start and writes each one's collapsed stacks to
``DIR/<gateway>.txt``; ``python -m bench.profile DIR/<gateway>.txt`` prints where the samples
fell: the functions with the most samples on their own (self) and beneath them (inclusive), by
thread. Profiling costs the gateway CPU, so a profiled run's figures are not the run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from pathlib import Path


def available() -> bool:
    return shutil.which("py-spy") is not None


class Profiler:
    """``py-spy record`` on one process until ``stop``; idle stacks are left out."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        args = ["py-spy", "record", "--pid", str(self.pid), "--format", "raw", "--threads"]
        args += ["--rate", str(self.rate), "--output", str(self.out), "--nonblocking"]
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(0.5)  # let it attach before the load starts

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 30)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def _frame_name(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: lines apart, one function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


# Leaves where a thread waits rather than works (py-spy can't tell a C-level wait from work):
# an executor thread waiting for its next job, a lock or event, the checkpoint thread's timer,
# the store's writer thread waiting on its SimpleQueue (a C call: the leaf is its loop).
IDLE_LEAVES = (
    "_worker (thread.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "WriterThread._run (base.py)",
)


# Where a sample's time goes, by the first of these functions found on its stack (innermost
# first): the per-unit work docs/performance.md tabulates.
STAGES = (
    ("render (Jinja2)", ("Sender.render", "Spliced.render")),
    ("sign (HMAC)", ("webhook_headers",)),
    ("POST (delivery HTTP client)", ("Sender._post", "Sender.post")),
    ("settle (store)", ("settle_deliveries.<locals>.settle", "settle_delivery.<locals>.settle")),
    ("claim (store)", ("claim_deliveries.<locals>.claim",)),
    ("fan-out and history (store)", ("complete_push.<locals>.complete",)),
    ("insert push (store)", ("insert_push.<locals>.insert",)),
    # A self-contained push: inserted processed, its events, history and fan-out in one write.
    ("insert processed push (store)", ("insert_processed_push.<locals>.insert",)),
    # Channex ARI: the last availability of the slots a push touches, read on the writer.
    ("last availability (store)", ("known_availability.<locals>.known",)),
    ("other store writes", ("SQLiteBase._flush",)),
    ("store reads", ("SQLiteBase._read", "_reader_db")),
    ("WAL checkpoints", ("_checkpoint_forever",)),
    ("translation (source plugin)", ("Processor._process", "Processor.translate")),
    ("ingest request (aiohttp server)", ("RequestHandler._handle_request", "RequestHandler.start")),
    ("delivery task (other)", ("Deliverer.deliver",)),
)


def _ends_with_any(function: str, keys: tuple[str, ...]) -> bool:
    return any(function == key or function.endswith("." + key) for key in keys)


def stages(path: Path) -> list[tuple[str, float]]:
    """The share of non-idle samples per stage (``STAGES``); the rest is the event loop's own
    work: uvloop's C code (socket reads and writes, the poll), callbacks and task switches."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        names = [_frame_name(f) for f in stack.split(";")[1:] if "(" in f]
        if names and names[-1] in IDLE_LEAVES:
            continue
        count = int(count_text)
        total += count
        for stage, keys in STAGES:
            if any(_ends_with_any(name.split(" (")[0], keys) for name in names):
                counts[stage] += count
                break
        else:
            counts["event loop and the rest"] += count
    return [(stage, n / total) for stage, n in counts.most_common()] if total else []


def summarise(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, and the share of samples per thread, with
    samples of threads waiting for work left out. ``Runner.run`` on its own is uvloop's C code:
    socket I/O, callbacks and the poll itself, which py-spy can't look into."""
    selfs: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if _frame_name(frames[-1]) in IDLE_LEAVES:
            continue
        total += count
        threads[thread.split(": ", 1)[-1]] += count
        names = [_frame_name(f) for f in frames[1:] if "(" in f]
        if names and names[-1] in IDLE_LEAVES:
            continue
        if names:
            selfs[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total:,} samples"]
    out.append("threads: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common()))
    out.append("\n| stage | share of samples |\n| --- | ---: |")
    out += [f"| {stage} | {share:.1%} |" for stage, share in stages(path)]
    out.append("\n| self % | function |\n| ---: | --- |")
    out += [f"| {n / total:.1%} | `{name}` |" for name, n in selfs.most_common(top)]
    out.append("\n| inclusive % | function |\n| ---: | --- |")
    out += [f"| {n / total:.1%} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for file in args.files:
        print(summarise(file, args.top))
        print()


if __name__ == "__main__":
    main()
