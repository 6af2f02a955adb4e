"""Run a child process under a memory limit: a child of this process's cgroup v1 memory
controller with `memory.limit_in_bytes` set (as root). Past the limit the kernel reclaims page
cache first and then OOM-kills the child, which is what proves a run fits, or does not."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


def _own_memory_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return ROOT / path.lstrip("/")
    raise RuntimeError("no cgroup v1 memory controller in /proc/self/cgroup")


def run_capped(cmd: list[str], limit_bytes: int | None) -> tuple[int, str, str, float]:
    """(return code, stdout, stderr, seconds) of `cmd`, under `limit_bytes` if given."""
    group = None
    if limit_bytes is not None:
        if os.geteuid() != 0:
            raise SystemExit("--memory-cap needs root (it creates a memory cgroup)")
        group = _own_memory_cgroup() / f"svdzip-bench-{os.getpid()}-{time.monotonic_ns()}"
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if group is not None:
            (group / "cgroup.procs").write_text(str(proc.pid))  # before it has imported anything
        out, err = proc.communicate()
        return proc.returncode, out, err, time.perf_counter() - t0
    finally:
        if group is not None:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
