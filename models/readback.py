"""Read an exported bundle's weights back into the torch model.

The ONNX graphs hold every weight the runtime uses, but the exporter renames, transposes, reshapes and splits
some of them (linear weights stored transposed for ``MatMul`` under names of the graph's choosing, norm weights as
(C, 1, 1), the rows of an indexed table as separate constants). The map from graph
initializers to state-dict entries is found by exporting a probe: the same architecture with each tensor
filled with its own random values, matched back by value. That map is then applied to the bundle's graphs.

Why: a bundle is committed, a training run's checkpoint is not. Reading the bundle back lets a decoder recipe
be tried on the shipped vision side (``dicom-agent model train --vision-from``) and lets ``bench/model.py``
time torch against ONNX Runtime without the original run. Tensors only used in training (the CLIP projections
and temperature) are not in any graph and stay as initialised; :func:`model_from_bundle` returns their names.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.network import NetConfig, UnifiedModel

GRAPHS = ("enc2d", "enc3d", "dec_step")
# where a state-dict tensor is found: one (graph, initializer, transposed) for the whole tensor, or one per row
# (the exporter keeps the rows of a small table that the forward pass indexes as separate constants)
Source = list[tuple[str, str, bool]]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def probe_map(cfg: NetConfig) -> dict[str, Source]:
    """For each state-dict entry that a graph holds: where (found by exporting a random-valued probe)."""
    from models.export import export_graphs

    gen = torch.Generator().manual_seed(12345)
    probe = UnifiedModel(cfg)
    state = probe.state_dict()
    for tensor in state.values():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)  # distinct, non-zero values
    probe.load_state_dict(state)
    found: dict[str, Source] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_graphs(probe, Path(tmp))
        for graph in GRAPHS:
            inits = _initializers(paths[graph])
            for key, tensor in state.items():
                if key in found or not tensor.is_floating_point():
                    continue
                t = tensor.numpy()
                whole = _find(inits, t)
                rows = [_find(inits, row) for row in t] if whole is None and t.ndim == 2 else []
                if whole is not None:
                    found[key] = [(graph, *whole)]
                elif rows and all(r is not None for r in rows):
                    found[key] = [(graph, *r) for r in rows if r is not None]
    return found


def _find(inits: dict[str, np.ndarray], t: np.ndarray) -> tuple[str, bool] | None:
    """The initializer holding ``t``: as is or reshaped (norm weights as (C, 1, 1)), or transposed (MatMul)."""
    for name, value in inits.items():
        if value.size != t.size or value.dtype != t.dtype:
            continue
        if np.array_equal(value.ravel(), t.ravel()):
            return name, False
        if t.ndim == 2 and value.ndim == 2 and np.array_equal(value.T.ravel(), t.ravel()):
            return name, True
    return None


def model_from_bundle(bundle: Path) -> tuple[UnifiedModel, list[str]]:
    """The bundle's network as a torch model (eval mode) and the state-dict entries no graph holds."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    cfg = NetConfig(**manifest["config"])
    model = UnifiedModel(cfg)
    where = probe_map(cfg)
    graphs = {g: _initializers(bundle / f"{g}.onnx") for g in GRAPHS}
    state = model.state_dict()
    for key, pieces in where.items():
        lost = [name for g, name, _ in pieces if name not in graphs[g]]
        if lost:  # the exporter merges initializers of equal value: two tensors equal in this bundle
            raise ValueError(f"{bundle}: {key} is stored under {lost}, which this bundle's graphs do not hold")
        parts = [graphs[g][name].T if transposed else graphs[g][name] for g, name, transposed in pieces]
        value = np.stack([p.ravel() for p in parts]) if len(parts) > 1 else parts[0]
        state[key] = torch.from_numpy(np.ascontiguousarray(value).reshape(tuple(state[key].shape)).copy())
    model.load_state_dict(state)
    model.eval()
    missing = sorted(k for k, t in state.items() if t.is_floating_point() and k not in where)
    return model, missing
