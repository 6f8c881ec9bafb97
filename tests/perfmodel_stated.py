"""Stated ceilings that the perfmodel tests compute with exactly (not measured)."""

from peakknn import perfmodel

STATED = perfmodel.Ceilings(
    device="cpu:test",
    matmul_flops={"fp32": 400e9, "bf16": 1600e9},
    best_chunk={"fp32": 4096, "bf16": 8192},
    compare_rate={"fp32": 12e9, "bf16": 8e9},
    bandwidth=25e9,
    measured_at="2030-01-01T00:00:00+00:00",
    peak_flops={"fp32": 500e9, "bf16": 2000e9},
    read_bandwidth=40e9,
    cache_bytes=32 << 20,
    probe_flops=100e9,
    packed_queries={"fp32": 256, "bf16": 64},
)
