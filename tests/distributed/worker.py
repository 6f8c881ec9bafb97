"""One rank of a test scenario: python worker.py [MODULE:]SCENARIO RANK WORLD PORT OUTDIR ARGS_JSON
(MODULE defaults to scenarios)."""

import datetime
import importlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

name, rank, world, port, out, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
seconds = args.pop("pg_timeout", 30)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=seconds))
try:
    module, _, fn = name.rpartition(":")  # "module:function", or a function of scenarios.py
    result = getattr(importlib.import_module(module or "scenarios"), fn)(rank, world, Path(out), **args)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
finally:
    dist.destroy_process_group()
