"""Speed of a stage-2 training step (not a test): outputs only where a target is, against the full pass.

Stage 2 learns from the few answer tokens after a long findings-text prompt. ``UnifiedModel.text_loss`` computes
the output layer, the softmax and the copy distribution only at those positions; the peer measured in the same
run is the full teacher-forced pass (``text_logits`` + ``F.cross_entropy(ignore_index=-100)``), which computes
them at every position. Both start from the same weights and run the same real stage-2 batches (the recipe's
sampler, ``models.train.stage2_batch``, on a small pool of training phantoms and a bundle's frozen vision
features): memory adapter, loss, backward, grad-norm clip, AdamW step — the whole step but the batch sampling.

    python bench/train_step.py [--bundle models/bundled] [--steps 40] [--threads 2]

Prints a table and writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

POOL = {"cxr": 60, "ct": 12, "pet": 12}  # phantoms drawn (the recipe's pools are 2000 / 300 / 300)


def full_pass_loss(model: Any, inp: torch.Tensor, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    logits = model.text_logits(inp, memory)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundled")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_step.json")
    args = ap.parse_args()

    from models import train
    from models.dataset import make_samples
    from models.tokenizer import PAD, token_id

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    start, tok, _ = train._bundle_start(args.bundle)
    cfg = train.TrainConfig()
    pools = {k: make_samples(k, n, train.TRAIN_SEED) for k, n in POOL.items()}
    feats = {k: train.vision_features(start, p) for k, p in pools.items()}
    index, places = train.stage2_sampling(pools)
    rng = np.random.default_rng(0)
    pad = token_id(tok, PAD)
    batches = []
    for _ in range(args.steps):
        picks, ex = train.stage2_batch(pools, index, places, tok, cfg, rng)
        inp, tgt = train.pad_batch(ex, pad, start.cfg.max_len)
        batches.append((inp, tgt, train.memory_inputs(feats, picks)))

    losses: dict[str, Callable[..., torch.Tensor]] = {
        "full pass": full_pass_loss,
        "targets only": lambda m, i, t, mem: m.text_loss(i, t, mem),
    }
    runs: dict[str, dict[str, Any]] = {}
    for name in losses:
        model = copy.deepcopy(start).train()
        params = train.freeze_vision(model)
        opt = torch.optim.AdamW(params, lr=cfg.lr2, weight_decay=0.01)
        runs[name] = {"model": model, "params": params, "opt": opt, "s": [], "loss": []}
    for inp, tgt, parts in batches:  # interleaved: both see the same machine load
        for name, run in runs.items():
            t = time.perf_counter()
            loss = losses[name](run["model"], inp, tgt, run["model"]._memory(*parts))
            run["opt"].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run["params"], cfg.clip2)
            run["opt"].step()
            run["s"].append(time.perf_counter() - t)
            run["loss"].append(float(loss.detach()))

    ref = runs["full pass"]
    rows = []
    for name, run in runs.items():
        s = run["s"][1:]  # the first step allocates
        rows.append({"loss": name, "median_s": statistics.median(s), "mean_s": statistics.mean(s)})
    ratio = rows[0]["median_s"] / rows[1]["median_s"]
    drift = max(abs(a - b) for a, b in zip(ref["loss"], runs["targets only"]["loss"], strict=True))
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads},
        "bundle": json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))["version"],
        "steps": args.steps,
        "positions": int(sum(b[0].numel() for b in batches)),
        "targets": int(sum(int((b[1] != -100).sum()) for b in batches)),
        "rows": rows,
        "speedup": ratio,
        "first_loss_diff": abs(ref["loss"][0] - runs["targets only"]["loss"][0]),
        "max_loss_diff": drift,
    }
    print(f"stage-2 step, {args.steps} real batches, {args.threads} threads, bundle {result['bundle']}")
    print(f"positions {result['positions']}, of which targets {result['targets']}")
    for r in rows:
        print(f"  {r['loss']:<13} median {r['median_s'] * 1000:7.1f} ms  mean {r['mean_s'] * 1000:7.1f} ms")
    print(f"  speed-up {ratio:.2f}x; loss difference first step {result['first_loss_diff']:.2e}, max {drift:.2e}")
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
