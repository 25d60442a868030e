"""Write the big hostile-scale inputs of issue 19 (too big for tests/corpus/): many streams on one
GPU, many devices, many kernels, one huge kernel name, NUL bytes after a valid head.

Each is derived from one real kernel event of ``fixtures/prefill_serial_rank0.json.gz`` (its name,
category, args), repeated with new times, streams or devices.  ``tests/test_scale.py`` runs scaled
down versions at test time; this script writes the full sizes for a manual check:

    python scripts/make_scale_cases.py /tmp/scale      # then time traceview on each file
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "fixtures" / "prefill_serial_rank0.json.gz"


def real_kernel() -> dict:
    doc = json.loads(gzip.decompress(SOURCE.read_bytes()))
    return next(e for e in doc["traceEvents"] if e.get("cat") == "kernel" and "nccl" not in e["name"])


def _kernel_bytes(k: dict, ts: float, stream: int, device: int, name: str | None = None) -> bytes:
    e = dict(k, ts=ts, args=dict(k.get("args") or {}, stream=stream, device=device))
    if name is not None:
        e["name"] = name
    return json.dumps(e, separators=(",", ":")).encode()


def _write(path: Path, events) -> Path:
    with open(path, "wb") as f:
        f.write(b'{"traceEvents":[')
        for i, ev in enumerate(events):
            if i:
                f.write(b",\n")
            f.write(ev)
        f.write(b"]}")
    return path


def many_streams(path: Path, streams: int, k: dict | None = None) -> Path:
    """One kernel on each of ``streams`` streams of GPU 0, overlapping in time."""
    k = k or real_kernel()
    return _write(path, (_kernel_bytes(k, 1000.0 + 0.5 * (s % 1000), 1000 + s, 0) for s in range(streams)))


def many_devices(path: Path, devices: int, per_device: int = 4, k: dict | None = None) -> Path:
    """``per_device`` kernels on each of ``devices`` devices."""
    k = k or real_kernel()
    return _write(path, (_kernel_bytes(k, 1000.0 + 10.0 * j, 7, d) for d in range(devices) for j in range(per_device)))


def many_kernels(path: Path, kernels: int, names: int = 50, k: dict | None = None) -> Path:
    """``kernels`` kernels back to back on one stream, ``names`` distinct names."""
    k = k or real_kernel()
    dur = float(k["dur"])
    return _write(path, (_kernel_bytes(dict(k, dur=dur), 1000.0 + (dur + 1.0) * i, 7, 0, f"{k['name']}_{i % names}")
                         for i in range(kernels)))


def huge_name(path: Path, name_bytes: int, k: dict | None = None) -> Path:
    """Two kernels, one of them with a name of ``name_bytes`` bytes."""
    k = k or real_kernel()
    ev = _kernel_bytes(k, 1000.0, 7, 0, "@@NAME@@")
    a, b = ev.split(b"@@NAME@@")
    with open(path, "wb") as f:
        f.write(b'{"traceEvents":[' + _kernel_bytes(k, 900.0, 7, 0) + b",\n" + a)
        block = b"x" * (1 << 20)
        left = name_bytes
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
        f.write(b + b"]}")
    return path


def nuls_after_head(path: Path, nul_bytes: int, k: dict | None = None) -> Path:
    """A valid head and one kernel, then ``nul_bytes`` NUL bytes (a crash on some filesystems)."""
    k = k or real_kernel()
    with open(path, "wb") as f:
        f.write(b'{"traceEvents":[' + _kernel_bytes(k, 1000.0, 7, 0) + b",\n")
        f.truncate(f.tell() + nul_bytes)  # sparse: quick to make
    return path


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/traceview-scale")
    out.mkdir(parents=True, exist_ok=True)
    k = real_kernel()
    for p in (many_streams(out / "streams-200k.json", 200_000, k), many_devices(out / "devices-10k.json", 10_000, k=k),
              many_kernels(out / "kernels-2M.json", 2_000_000, k=k), huge_name(out / "name-500M.json", 500 << 20, k),
              nuls_after_head(out / "nuls-1G.json", 1 << 30, k)):
        print(f"{p}: {p.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
