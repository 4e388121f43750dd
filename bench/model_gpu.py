"""Speed of the bundled model's networks on a GPU (not a test): torch on CUDA in fp32 and fp16 against ONNX Runtime
measured on the same machine in the same run.

The GPU machine has torch and onnxruntime but not pydicom or SimpleITK, so it runs in two steps:

    python bench/model_gpu.py --save-inputs bench/results/gpu_inputs.npz    # here: the sample studies, preprocessed
    python bench/model_gpu.py --inputs bench/results/gpu_inputs.npz --checkpoint RUN/checkpoint.pt   # on the GPU

Per modality (the committed sample study's model input, exactly as ``bench/model.py`` prepares it):
- encoder graph (enc2d / enc3d: every head plus the decoder's cross K/V) latency at batch 1, and items/s at
  batch 1, 4, 8 and 32: ONNX Runtime on every provider it has there (CPU with all cores; CUDA where the installed
  build has it), torch eager on CUDA in fp32 and under fp16 autocast;
- a greedy report decode (at most 32 tokens, KV cache) on each;
- fp16 fidelity: the largest change of any finding probability and the share of segmentation pixels whose
  0.5-threshold flips against fp32, and whether the greedy tokens stay identical.

Writes ``bench/results/model_gpu.json`` (``--out``) and prints a table. Speed only: preprocessing and the rest of
the adapter run on CPU (``bench/model.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import numpy as np  # noqa: E402
from model import KINDS, REPORT_FINDINGS, encoder_feeds, encoder_graph, median_s, torch_greedy  # noqa: E402

BATCHES = (1, 4, 8, 32)


def save_inputs(bundle: Path, out: Path) -> None:
    """The sample studies' model inputs, produced the adapter's way (needs the full environment)."""
    from model import _inputs

    arrays = {kind: _inputs(bundle, kind)[:1] if kind == "cxr" else _inputs(bundle, kind) for kind in KINDS}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **{k: v.astype(np.float32) for k, v in arrays.items()})
    print(f"written {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def timed(fn: Callable[[], object], sync: Callable[[], None], repeat: int) -> float:
    """Median seconds of ``fn`` until ``sync`` says its queued GPU work is done; 3 warm-up calls."""
    return median_s(lambda: (fn(), sync()), repeat, warmup=3)


def ort_figures(runner: Any, kind: str, x: np.ndarray, prompt: list[int], repeat: int) -> dict[str, Any]:
    from dicom_agent.inference.onnx_runner import DecoderFeatures

    graph = encoder_graph(kind)
    res: dict[str, Any] = {"provider": runner.providers[0], "threads": os.cpu_count()}
    for batch in BATCHES:
        f = encoder_feeds(runner, kind, x, batch)
        s = timed(lambda f=f: runner._run(graph, f), lambda: None, repeat)
        res[f"batch{batch}_per_s"] = batch / s
        if batch == 1:
            res["encoder_s"] = s
    out = runner._run(graph, encoder_feeds(runner, kind, x))
    feats = DecoderFeatures(out["cross_k"][:, :1], out["cross_v"][:, :1])
    res["decode32_s"] = timed(lambda: runner.generate_ids(feats, prompt, max_tokens=32), lambda: None, repeat)
    res["tokens"] = runner.generate_ids(feats, prompt, max_tokens=32)
    return res


def report_prompt(runner: Any) -> list[int]:
    return list(runner.prompt_ids("report", "en", None, REPORT_FINDINGS))


@contextmanager
def precision(dtype: str, device: str) -> Iterator[None]:
    import torch

    with torch.no_grad(), torch.autocast(device, dtype=torch.float16) if dtype == "fp16" else nullcontext():
        yield


def torch_figures(
    model: Any,
    runner: Any,
    kind: str,
    x: np.ndarray,
    device: str,
    dtype: str,
    prompt: list[int],
    eos: int,
    repeat: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Timings of ``model`` (already on ``device``; its inputs made as ``runner``'s), and the batch-1 finding
    probabilities and masks (for the fp16 fidelity check)."""
    import torch

    from models.export import ENC2D_OUTPUTS, ENC3D_OUTPUTS, DecStep, Enc2D, Enc3D

    wrapper = (Enc2D(model) if kind == "cxr" else Enc3D(model)).eval()
    step = DecStep(model).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def tensors(batch: int) -> list[torch.Tensor]:
        return [torch.from_numpy(v).to(device) for v in encoder_feeds(runner, kind, x, batch).values()]

    res: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": dtype}
    with precision(dtype, device):
        for batch in BATCHES:
            t = tensors(batch)
            s = timed(lambda t=t: wrapper(*t), sync, repeat)
            res[f"batch{batch}_per_s"] = batch / s
            if batch == 1:
                res["encoder_s"] = s
        outs = wrapper(*tensors(1))
        ck, cv = outs[-2][:, :1], outs[-1][:, :1]
        res["decode32_s"] = timed(lambda: torch_greedy(model, step, ck, cv, prompt, eos), sync, repeat)
        res["tokens"] = torch_greedy(model, step, ck, cv, prompt, eos)
    names = ENC2D_OUTPUTS if kind == "cxr" else ENC3D_OUTPUTS
    maps = {name: outs[names.index(name)].float().cpu().numpy() for name in ("probs", "seg")}
    if device == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return res, maps


def fidelity(fp32: dict[str, np.ndarray], fp16: dict[str, np.ndarray], same_tokens: bool) -> dict[str, Any]:
    return {
        "max_abs_prob_change": float(np.abs(fp32["probs"] - fp16["probs"]).max()),
        "seg_pixels_flipped": float(((fp32["seg"] > 0.5) != (fp16["seg"] > 0.5)).mean()),
        "same_tokens": same_tokens,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    inputs = np.load(args.inputs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* wheels that torch uses
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers(),
        },
        "bundle": str(args.bundle),
        "modalities": {},
    }
    from dicom_agent.inference.onnx_runner import BundleRunner
    from models.export import load_checkpoint

    # each loaded once: ONNX Runtime per provider (CPU with every core; CUDA where the installed build has it)
    runners = {"cpu": BundleRunner(args.bundle, device="cpu", threads=os.cpu_count())}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runners["cuda"] = BundleRunner(args.bundle, device="cuda", threads=os.cpu_count())
    prompt, eos = report_prompt(runners["cpu"]), runners["cpu"]._special["<eos>"]
    model = load_checkpoint(args.checkpoint)[0].to(device)
    dtypes = ("fp32", "fp16") if device == "cuda" else ("fp32",)
    for kind in args.kinds.split(","):
        x = inputs[kind]
        entry: dict[str, Any] = {
            f"ort_{provider}": ort_figures(runner, kind, x, prompt, args.repeat) for provider, runner in runners.items()
        }
        maps = {}
        for dtype in dtypes:
            name = f"torch_{device}_{dtype}"
            entry[name], maps[dtype] = torch_figures(
                model, runners["cpu"], kind, x, device, dtype, prompt, eos, args.repeat
            )
        if device == "cuda":
            same = entry["torch_cuda_fp32"]["tokens"] == entry["torch_cuda_fp16"]["tokens"]
            entry["fp16_vs_fp32"] = fidelity(maps["fp32"], maps["fp16"], same)
        entry["torch_vs_ort_cpu_same_tokens"] = entry[f"torch_{device}_fp32"]["tokens"] == entry["ort_cpu"]["tokens"]
        results["modalities"][kind] = entry
        print(f"{kind} done", file=sys.stderr, flush=True)
    return results


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.1f}"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| modality | runtime | enc ms (b1) | report ms (≤32 tok) | items/s b1 / b4 / b8 / b32 | enc vs ORT CPU |",
        "|---|---|---|---|---|---|",
    ]
    for kind, m in results["modalities"].items():
        base = m["ort_cpu"]["encoder_s"]
        for name, f in m.items():
            if not isinstance(f, dict) or "encoder_s" not in f:
                continue
            rates = " / ".join(f"{f[f'batch{b}_per_s']:.1f}" for b in BATCHES)
            lines.append(
                f"| {kind} | {name} | {_ms(f['encoder_s'])} | {_ms(f['decode32_s'])} | {rates} | "
                f"{base / f['encoder_s']:.2f}× |"
            )
        if "fp16_vs_fp32" in m:
            fid = m["fp16_vs_fp32"]
            lines.append(
                f"| {kind} | fp16 vs fp32 | max Δp {fid['max_abs_prob_change']:.4f} | same tokens: "
                f"{fid['same_tokens']} | mask pixels flipped {fid['seg_pixels_flipped']:.2e} | |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundled")
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models" / "runs" / "latest" / "checkpoint.pt")
    ap.add_argument("--inputs", type=Path, default=REPO / "bench" / "results" / "gpu_inputs.npz")
    ap.add_argument("--save-inputs", type=Path, help="write the preprocessed sample inputs here and stop")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model_gpu.json")
    args = ap.parse_args()
    if args.save_inputs:
        save_inputs(args.bundle, args.save_inputs)
        return
    results = run(args)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
