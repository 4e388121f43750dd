"""Phantom generation speed, with reading the same study back from DICOM (pydicom) as the peer in the same run.

    python bench/phantoms.py [--n 50]

Prints milliseconds per case (median of n; wall clock, and CPU time of this process, which is the steadier figure
on a shared machine) for each kind and size, and the ratio to decoding the written DICOM of one such case with
pydicom (how fast a training loop could read pre-rendered files instead), both in CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from models.synthetic import make_case
from models.synthetic.dicom_writer import write_case

CONFIGS = [
    ("cxr", {"size": 128}),
    ("cxr", {"size": 256}),
    ("ct", {"size": 128, "depth": 64}),
    ("pet", {"size": 128, "depth": 96}),
]


def _median_ms(fn, n: int, clock=time.perf_counter) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(n):
        t0 = clock()
        fn(i)
        times.append((clock() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    print(f"{'kind':5} {'shape':>14} {'gen wall ms':>12} {'gen cpu ms':>11} {'read cpu ms':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, kw in CONFIGS:
            n = args.n if kind == "cxr" else max(3, args.n // 6)
            make_case(kind, 0, **kw)  # warm caches
            gen = _median_ms(lambda i, kind=kind, kw=kw: make_case(kind, 1000 + i, **kw), n)
            gen_cpu = _median_ms(lambda i, kind=kind, kw=kw: make_case(kind, 1000 + i, **kw), n, time.process_time)
            study = write_case(make_case(kind, 1, **kw), Path(tmp) / f"{kind}{kw['size']}")

            def read(_: int, files: list[Path] = study.files) -> None:
                for f in files:
                    pydicom.dcmread(f).pixel_array  # noqa: B018

            rd = _median_ms(read, 5, time.process_time)
            shape = "x".join(str(v) for v in make_case(kind, 0, **kw).image.shape)
            print(f"{kind:5} {shape:>14} {gen:12.1f} {gen_cpu:11.1f} {rd:12.1f} {gen_cpu / rd:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
