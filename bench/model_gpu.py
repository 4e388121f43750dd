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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

KINDS = ("cxr", "ct", "pet")
BATCHES = (1, 4, 8, 32)
PROMPT_FINDINGS = "Nodule in the right upper lobe, measuring 12 mm. Left pleural effusion."  # as bench/model.py


def save_inputs(bundle: Path, out: Path) -> None:
    """The sample studies' model inputs, produced the adapter's way (needs the full environment)."""
    sys.path.insert(0, str(REPO / "bench"))
    from model import _inputs  # bench/model.py

    arrays = {kind: _inputs(bundle, kind)[:1] if kind == "cxr" else _inputs(bundle, kind) for kind in KINDS}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **{k: v.astype(np.float32) for k, v in arrays.items()})
    print(f"written {out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def timed(fn: Callable[[], object], sync: Callable[[], None], repeat: int, warmup: int = 3) -> float:
    """Median seconds of ``fn`` (``sync`` waits for queued GPU work so that the clock stops when it is done)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def feeds_for(kind: str, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    from dicom_agent.inference.onnx_runner import MODALITY_INDEX

    if kind == "cxr":
        return {"image": np.repeat(x[:1, None], batch, axis=0)}
    return {"volume": np.repeat(x[None], batch, axis=0), "modality": np.full((batch,), MODALITY_INDEX[kind], np.int64)}


def ort_figures(bundle: Path, kind: str, x: np.ndarray, device: str, repeat: int) -> dict[str, Any]:
    from dicom_agent.inference.onnx_runner import BundleRunner, DecoderFeatures

    runner = BundleRunner(bundle, device=device, threads=os.cpu_count())
    graph = "enc2d" if kind == "cxr" else "enc3d"
    res: dict[str, Any] = {"provider": runner.providers[0], "threads": os.cpu_count()}
    for batch in BATCHES:
        f = feeds_for(kind, x, batch)
        s = timed(lambda f=f: runner._run(graph, f), lambda: None, repeat)
        res[f"batch{batch}_per_s"] = batch / s
        if batch == 1:
            res["encoder_s"] = s
    out = runner._run(graph, feeds_for(kind, x, 1))
    feats = DecoderFeatures(out["cross_k"][:, :1], out["cross_v"][:, :1])
    prompt = runner.prompt_ids("report", "en", None, PROMPT_FINDINGS)
    res["decode32_s"] = timed(lambda: runner.generate_ids(feats, prompt, max_tokens=32), lambda: None, repeat)
    res["tokens"] = list(runner.generate_ids(feats, prompt, max_tokens=32))
    res["_prompt"] = prompt
    res["_eos"] = runner._special["<eos>"]
    return res


@contextmanager
def precision(dtype: str, device: str) -> Iterator[None]:
    import torch

    with torch.no_grad(), torch.autocast(device, dtype=torch.float16) if dtype == "fp16" else nullcontext():
        yield


def torch_figures(
    checkpoint: Path, kind: str, x: np.ndarray, device: str, dtype: str, prompt: list[int], eos: int, repeat: int
) -> dict[str, Any]:
    import torch

    from models.export import ENC2D_OUTPUTS, ENC3D_OUTPUTS, DecStep, Enc2D, Enc3D, load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model = model.to(device)
    wrapper = (Enc2D(model) if kind == "cxr" else Enc3D(model)).eval()
    step = DecStep(model).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def tensors(batch: int) -> list[torch.Tensor]:
        return [torch.from_numpy(v).to(device) for v in feeds_for(kind, x, batch).values()]

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

        def decode() -> list[int]:
            pk, pv = model.empty_past(1)
            ids = torch.tensor([prompt], device=device)
            tokens: list[int] = []
            for _ in range(min(32, model.cfg.max_len - len(prompt))):  # the ORT runner's budget
                logits, pk, pv = step(ids, ck, cv, pk, pv)
                nxt = int(logits[0].argmax())  # the host needs each token: a real decode syncs every step too
                if nxt == eos:
                    break
                tokens.append(nxt)
                ids = torch.tensor([[nxt]], device=device)
            return tokens

        res["decode32_s"] = timed(decode, sync, repeat)
        res["tokens"] = decode()
    # probabilities and masks of batch 1, for the fp16 fidelity check
    probs = outs[0].float().cpu().numpy()
    names = ENC2D_OUTPUTS if kind == "cxr" else ENC3D_OUTPUTS
    res["_probs"] = probs
    res["_seg"] = outs[names.index("seg")].float().cpu().numpy()
    if device == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return res


def fidelity(fp32: dict[str, Any], fp16: dict[str, Any]) -> dict[str, Any]:
    return {
        "max_abs_prob_change": float(np.abs(fp32["_probs"] - fp16["_probs"]).max()),
        "seg_pixels_flipped": float(((fp32["_seg"] > 0.5) != (fp16["_seg"] > 0.5)).mean()),
        "same_tokens": fp32["tokens"] == fp16["tokens"],
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
    for kind in args.kinds.split(","):
        x = inputs[kind]
        entry: dict[str, Any] = {"ort_cpu": ort_figures(args.bundle, kind, x, "cpu", args.repeat)}
        if "CUDAExecutionProvider" in ort.get_available_providers():
            entry["ort_cuda"] = ort_figures(args.bundle, kind, x, "cuda", args.repeat)
        prompt, eos = entry["ort_cpu"].pop("_prompt"), entry["ort_cpu"].pop("_eos")
        entry.get("ort_cuda", {}).pop("_prompt", None), entry.get("ort_cuda", {}).pop("_eos", None)
        dtypes = ("fp32", "fp16") if device == "cuda" else ("fp32",)
        for dtype in dtypes:
            entry[f"torch_{device}_{dtype}"] = torch_figures(
                args.checkpoint, kind, x, device, dtype, prompt, eos, args.repeat
            )
        if device == "cuda":
            entry["fp16_vs_fp32"] = fidelity(entry["torch_cuda_fp32"], entry["torch_cuda_fp16"])
        for figures in entry.values():
            for key in ("_probs", "_seg"):
                figures.pop(key, None)
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
