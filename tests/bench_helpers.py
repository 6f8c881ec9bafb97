"""Running benchmark scripts from the tests (tests/test_benchmarks.py, tests/test_topk_benchmarks.py).

Not a test module: the test files import it by name (tests/ is on sys.path, see partitioned_helpers.py).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    """stdout of `python benchmarks/<script> args...`, which must exit 0 (its stderr tail otherwise)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
