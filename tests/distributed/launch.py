"""Run a scenario of `scenarios.py` in `world` gloo processes (subprocesses, bounded by a timeout);
each rank returns {check: detail-or-None}; None means passed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scenario: str, world: int, timeout: float = 60.0, **args) -> list[dict]:
    """Per rank, the JSON dict the scenario returned; raises AssertionError (with every rank's
    output) when a rank fails, hangs past `timeout` (then all are killed) or returns nothing."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "worker.py"), scenario, str(rank), str(world), str(port), tmp, json.dumps(args)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for rank in range(world)
        ]  # fmt: skip
        outputs, hung = [], False
        for p in procs:
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                hung = True
                for q in procs:
                    q.kill()
                out, _ = p.communicate()
            outputs.append(out)
        text = "\n".join(f"--- rank {r} (rc {p.returncode}):\n{o[-3000:]}" for r, (p, o) in enumerate(zip(procs, outputs)))
        assert not hung, f"{scenario} world {world} hung past {timeout}s\n{text}"
        results = []
        for rank, p in enumerate(procs):
            f = Path(tmp) / f"rank{rank}.json"
            assert p.returncode == 0 and f.exists(), f"{scenario} world {world} failed\n{text}"
            results.append(json.loads(f.read_text()))
        return results


def failures(results: list[dict], prefix: str = "") -> list[str]:
    """'rank r: check: detail' for every failed check whose name starts with prefix (names
    starting with "_" are figures a scenario reports beside its checks, not checks)."""
    return [f"rank {r}: {name}: {d}" for r, res in enumerate(results) for name, d in res.items()
            if name.startswith(prefix) and not name.startswith("_") and d is not None]  # fmt: skip
