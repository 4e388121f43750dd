"""Speed of the bundled model on CPU (not a test): per modality, on the committed sample studies.

Columns, all measured in this run:
- preprocess: DICOM -> model input exactly as the adapter does it (pydicom radiograph, SimpleITK volume);
- ORT vs torch eager: the encoder graph (enc2d / enc3d) and a greedy report decode (at most 32 tokens, both
  stop at the same <eos>), ONNX Runtime against the same weights in torch eager (``--checkpoint``, the training
  run's ``checkpoint.pt``, or else the bundle's weights read back by ``models.readback``; same threads) — ratio;
- end to end: ``BundleAdapter.predict`` on the sample study (preprocess, heads, map back, EN/ZH render,
  narrative), in a fresh process per modality, with its peak RSS;
- throughput: encoder items/s at batch 1, 4, 8.

    python bench/model.py [--bundle models/bundled] [--checkpoint models/runs/latest/checkpoint.pt] [--threads 2]

Prints a table and writes bench/results/model.json. Targets (issue 3): radiograph study <= 1 s, 64-slice CT <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

KINDS = ("cxr", "ct", "pet")


def median_s(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _study(kind: str) -> Any:
    from dicom_agent.inference.types import SeriesInput, StudyInput

    folder = REPO / "samples" / kind
    truth = json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))
    series = SeriesInput(truth["series_instance_uid"], truth["modality"], sorted(folder.glob("*.dcm")))
    return StudyInput(truth["study_instance_uid"], [series])


def end_to_end(bundle: Path, kind: str, threads: int, repeat: int) -> dict[str, Any]:
    """Runs in a child process (``--child``) so that its peak RSS is this modality's alone."""
    import resource

    from dicom_agent.inference.bundle_adapter import BundleAdapter

    t = time.perf_counter()
    adapter = BundleAdapter(bundle, device="cpu", threads=threads)
    load_s = time.perf_counter() - t
    study = _study(kind)
    timings = []
    result = None

    def once() -> None:
        nonlocal result
        result = adapter.predict(study)
        timings.append(result.timings)

    total = median_s(once, repeat)
    assert result is not None
    stages = {k: statistics.median(t[k] for t in timings[1:]) for k in timings[-1]}
    return {
        "load_s": load_s,
        "predict_s": total,
        "stages_s": stages,
        "present": sorted({f.label for f in result.present}),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


_ADAPTERS: dict[Path, Any] = {}


def _inputs(bundle: Path, kind: str) -> np.ndarray:
    """The sample study's model input, produced the adapter's way (also times preprocessing); a CT for a bundle
    with fine-grid channels comes as (1+K,D,s,s): the volume, then its K channels (a PET without them)."""
    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.inference.volume import load_volume, window

    if bundle not in _ADAPTERS:  # loaded once: preprocessing time must not include loading the graphs
        _ADAPTERS[bundle] = BundleAdapter(bundle, device="cpu", narrative=False)
    adapter = _ADAPTERS[bundle]
    study = _study(kind)
    files = study.series[0].files
    if kind == "cxr":
        radiographs = adapter._radiographs(files[0], study)
        return np.stack([adapter._normalize_cxr(r) for r in radiographs])
    volume = load_volume(files, adapter.grids[kind], study.study_instance_uid)
    values = window(volume.values, *adapter.windows[kind])
    dot = adapter._dot(kind, volume)  # None where the bundle takes none (PET before 0.19.0: zeros)
    return values if dot is None else np.concatenate([values[None], dot.reshape(-1, *values.shape)])


def preprocess_s(bundle: Path, kind: str, repeat: int) -> float:
    return median_s(lambda: _inputs(bundle, kind), repeat)


# a typical prompt: the findings text of two findings (bundles trained with it), then the instruction
REPORT_FINDINGS = "Nodule in the right upper lobe, measuring 12 mm. Left pleural effusion."


def encoder_graph(kind: str) -> str:
    return "enc2d" if kind == "cxr" else "enc3d"


def encoder_feeds(runner: Any, kind: str, x: np.ndarray, batch: int = 1) -> dict[str, np.ndarray]:
    """The encoder graph's inputs: the first radiograph of ``x``, or the volume ``x`` (with its fine-grid channels
    where ``_inputs`` gave them) as ``runner.volume_feeds`` makes them, repeated ``batch`` times."""
    if kind == "cxr":
        return {"image": np.repeat(x[:1, None], batch, axis=0)}
    volume, dot = (x[0], x[1:]) if x.ndim == 4 else (x, None)
    return {name: np.repeat(v, batch, axis=0) for name, v in runner.volume_feeds(volume, kind, dot).items()}


def torch_greedy(
    model: Any, step: Any, ck: Any, cv: Any, prompt: list[int], eos: int, max_tokens: int = 32
) -> list[int]:
    """Greedy decoding through the torch ``DecStep`` with the KV cache, on the device of ``ck``, with the ONNX
    runner's token budget (``BundleRunner.generate_ids``)."""
    import torch

    pk, pv = model.empty_past(1)
    ids = torch.tensor([prompt], device=ck.device)
    seen = ids[:, :0]  # tokens of the cached positions (used by a decoder with the copy head)
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(min(max_tokens, model.cfg.max_len - len(prompt))):
            logits, pk, pv = step(ids, ck, cv, pk, pv, seen)
            nxt = int(logits[0].argmax())  # the host needs each token: on a GPU every step syncs, as it would in use
            if nxt == eos:
                break
            tokens.append(nxt)
            seen = torch.cat([seen, ids], dim=1)
            ids = torch.tensor([[nxt]], device=ck.device)
    return tokens


def ort_vs_torch(bundle: Path, checkpoint: Path | None, kind: str, threads: int, repeat: int) -> dict[str, Any]:
    import torch

    from dicom_agent.inference.onnx_runner import BundleRunner, DecoderFeatures

    runner = BundleRunner(bundle, device="cpu", threads=threads)
    feeds = encoder_feeds(runner, kind, _inputs(bundle, kind))
    graph = encoder_graph(kind)
    out = runner._run(graph, feeds)
    ort_enc = median_s(lambda: runner._run(graph, feeds), repeat)
    feats = DecoderFeatures(out["cross_k"][:, :1], out["cross_v"][:, :1])
    prompt = runner.prompt_ids("report", "en", None, REPORT_FINDINGS)
    ort_dec = median_s(lambda: runner.generate_ids(feats, prompt, max_tokens=32), repeat)
    res: dict[str, Any] = {"ort_encoder_s": ort_enc, "ort_decode32_s": ort_dec}
    from models.export import DecStep, Enc2D, Enc3D, load_checkpoint
    from models.readback import model_from_bundle

    torch.set_num_threads(threads)
    if checkpoint is not None and checkpoint.is_file():
        model, _ = load_checkpoint(checkpoint)
        res["torch_weights"] = str(checkpoint)
    else:  # no training run here: the bundle's own weights, read back from its graphs
        model, _ = model_from_bundle(bundle)
        res["torch_weights"] = "read back from the bundle"
    tfeeds = [torch.from_numpy(v) for v in feeds.values()]
    wrapper = (Enc2D(model) if kind == "cxr" else Enc3D(model)).eval()
    step = DecStep(model).eval()
    ck, cv = torch.from_numpy(feats.cross_k), torch.from_numpy(feats.cross_v)
    eos = runner._special["<eos>"]
    with torch.no_grad():
        res["torch_encoder_s"] = median_s(lambda: wrapper(*tfeeds), repeat)
    res["torch_decode32_s"] = median_s(lambda: torch_greedy(model, step, ck, cv, prompt, eos), repeat)
    res["encoder_speedup"] = res["torch_encoder_s"] / ort_enc
    res["decode_speedup"] = res["torch_decode32_s"] / ort_dec
    return res


def throughput(bundle: Path, kind: str, threads: int, repeat: int) -> dict[str, float]:
    from dicom_agent.inference.onnx_runner import BundleRunner

    runner = BundleRunner(bundle, device="cpu", threads=threads)
    x = _inputs(bundle, kind)
    graph = encoder_graph(kind)
    out = {}
    for batch in (1, 4, 8):
        feeds = encoder_feeds(runner, kind, x, batch)
        out[f"batch{batch}_per_s"] = batch / median_s(lambda f=feeds: runner._run(graph, f), repeat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundled")
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models" / "runs" / "latest" / "checkpoint.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(end_to_end(args.bundle, args.child, args.threads, args.repeat)))
        return
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(), "threads": args.threads},
        "bundle": str(args.bundle),
        "modalities": {},
    }
    for kind in args.kinds.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--bundle", str(args.bundle), "--threads", str(args.threads),
             "--repeat", str(args.repeat), "--child", kind],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        entry = {
            "end_to_end": json.loads(child.stdout.strip().splitlines()[-1]),
            "preprocess_s": preprocess_s(args.bundle, kind, args.repeat),
            **ort_vs_torch(args.bundle, args.checkpoint, kind, args.threads, args.repeat),
            "throughput": throughput(args.bundle, kind, args.threads, args.repeat),
        }
        results["modalities"][kind] = entry
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten {args.out}")


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.0f}"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| modality | preprocess ms | ORT enc ms | torch enc ms | enc ratio | ORT report ms | torch report ms | "
        "dec ratio | study e2e ms | peak RSS MB | items/s b1 / b4 / b8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, m in results["modalities"].items():
        e = m["end_to_end"]
        tp = m["throughput"]
        enc_ratio = f"{m['encoder_speedup']:.2f}×" if "encoder_speedup" in m else "—"
        dec_ratio = f"{m['decode_speedup']:.2f}×" if "decode_speedup" in m else "—"
        lines.append(
            f"| {kind} | {_ms(m['preprocess_s'])} | {_ms(m['ort_encoder_s'])} | {_ms(m.get('torch_encoder_s'))} | "
            f"{enc_ratio} | {_ms(m['ort_decode32_s'])} | {_ms(m.get('torch_decode32_s'))} | {dec_ratio} | "
            f"{_ms(e['predict_s'])} | {e['peak_rss_mb']:.0f} | "
            f"{tp['batch1_per_s']:.1f} / {tp['batch4_per_s']:.1f} / {tp['batch8_per_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
