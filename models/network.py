"""The unified network: one image encoder for radiographs and volume slices, structured heads, a text decoder.

Design (issue 3; seed papers UMIT arXiv 2503.15892 and UniMedI arXiv 2311.14851):
- a shared conv stem + small transformer encoder embeds a 2D image or each slice of a volume, with a learned
  modality embedding (CXR / CT / PET) added to its tokens; a slice comes with its differences to the slices
  beside it as extra channels (2.5D, ``slice_context``), a radiograph with zeros there;
- heads on every image/slice: per-label attention-pooled classifier, CenterNet-style detection (per-label
  heatmap + class-agnostic box size + sub-cell offset on the token grid), a light segmentation decoder with
  skips from the stem;
- volumes: UniMedI-style attention over slices — a relevance logit per slice, softmax-pooled into the volume
  embedding; the top-k slices' tokens are the decoder's visual memory (so its weights also tell which slices
  carry lesions), and per-label slice logits are soft-max pooled into volume finding logits;
- a small autoregressive decoder (self-attention with a KV cache + cross-attention to the visual memory and to
  one token per label carrying the heads' probability — "structured first"), tied embeddings, prompts made of
  task/language special tokens (UMIT-style instruction templates are built in ``models.text``).

Everything is written with plain tensor ops so that ``torch.onnx.export(dynamo=True)`` traces it with a
symbolic batch axis and a symbolic decoder length (see ``models.export``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("cxr", "ct", "pet")
COARSE_STD_FLOOR = 0.05  # in the [-1, 1] units of the pooled cells
CELL_CLIP = 6.0  # standardised cells fed to the segmentation decoder: air cells with a floored std can run away
SEG_TOPK = 16  # pixels of the segmentation map pooled into the label logit


@dataclass
class NetConfig:
    """Sizes of the network; stored in the checkpoint and the manifest so a bundle rebuilds exactly."""

    n_labels: int = 9
    vocab_size: int = 2048
    d: int = 128
    heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 3
    mlp_ratio: int = 4
    max_len: int = 192  # decoder positions (prompt + answer)
    image_size: int = 128  # radiograph side (pixels) after preprocessing
    slice_size: int = 64  # volume slice side after resampling
    depth: int = 32  # slices per volume after resampling
    top_k: int = 4  # slices whose tokens feed the decoder
    stride: int = 8  # token grid = input side / stride
    global_head: int = 1  # 1: a pooled whole-image classifier adds to the attention-pooled finding logits
    # side of the average-pooled input image whose pixels feed a coarse classifier (0 = off): a linear probe on
    # 16x16 pooled pixels separates effusion (1.00) and pneumothorax (0.94) that the encoder's tokens lost
    coarse: int = 16
    # 1: the standardised cells also feed the segmentation decoder as a map (needs ``coarse``). Effusion and
    # pneumothorax masks stayed empty without it (Dice 0.0): the decoder saw only the tokens and 3x3 skips
    coarse_seg: int = 1
    # 1: a pointer head (See et al. 2017, pointer-generator) mixes the vocabulary distribution with a copy of a
    # token already in the sequence. Without it the 0.8 decoder never learned to copy a place or a size out of the
    # findings text (it answered from the image); 0 keeps the bundles made before it loadable
    copy: int = 0
    # neighbouring slices on each side that a volume slice is encoded with (2.5D), as extra input channels holding
    # the slice minus each neighbour; a radiograph's are zero (a projection has no neighbours). A slice-wise
    # encoder alone cannot tell a nodule from a vessel crossing the slice: both are bright dots, but the vessel
    # goes on in the next slice. 0 keeps the bundles made before it loadable
    slice_context: int = 0
    # K: CT slices get K more input channels, the first K Hessian filters of ``blobs.FINE_CHANNELS`` computed on the
    # grid twice as fine (1: the dot enhancement; 2: and the dark-tube one); radiographs and PET get zeros there.
    # On the model grid a nodule under 15 mm is one voxel as bright as a vessel and a consolidation's air
    # bronchograms are blurred away; the filters on the finer grid keep them. 0 keeps older bundles loadable
    dot: int = 0
    # 1: CT slices get one more channel computed in the graph from the slice itself, its water likeness
    # clip(1 - |HU - 10| / 25, 0, 1) (``water_likeness``): in the [-1000, 400] HU window pleural fluid (10 HU) and the
    # chest wall (40 HU) are 0.02 apart, and three of four draws of the recipe with the fine-grid channels lost
    # or nearly lost CT effusion masks in stage 1; radiographs and PET get zeros. 0 keeps older bundles loadable
    water: int = 0
    # 1: PET slices read their own fine-grid channels in those K slots (``blobs.PET_FINE_CHANNELS``: the hot-blob
    # dot on the acquired 8 mm slices, zeros in the slots past it): on the model grid's 24 mm slices a 15 mm liver
    # lesion averages into the liver around it. Only the data changes, not the graph; 0: PET reads zeros there
    pet_dot: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


CT_WINDOW_HU = (-1000.0, 400.0)  # the CT input's window (``models.preprocess.CT_WINDOW``)
WATER_HU, WATER_HALF_WIDTH = 10.0, 25.0


def water_likeness(slices: torch.Tensor) -> torch.Tensor:
    """CT slices in [0, 1] (the HU window ``CT_WINDOW_HU``) -> how near water each voxel is, 1 at 10 HU falling to
    0 at 25 HU away (fluid 1, water 0.6; muscle at 40 HU, fat and lung 0)."""
    lo, hi = CT_WINDOW_HU
    hu = slices * (hi - lo) + lo
    return (1.0 - (hu - WATER_HU).abs() / WATER_HALF_WIDTH).clamp(min=0.0)


class Block(nn.Module):
    """Pre-norm transformer block (self-attention, optional cross-attention, MLP) with explicit K/V I/O."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, cross: bool) -> None:
        super().__init__()
        self.heads = heads
        self.dh = d // heads
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.cross = cross
        if cross:
            self.n2 = nn.LayerNorm(d)
            self.q_x = nn.Linear(d, d)
            self.kv_x = nn.Linear(d, 2 * d)
            self.proj_x = nn.Linear(d, d)
        self.n3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.dh).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(n, t, self.heads * self.dh)

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the visual memory once per image: (N, M, d) -> K, V each (N, H, M, dh)."""
        k, v = self.kv_x(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
        cross_k: torch.Tensor | None = None,
        cross_v: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(self._merge(a))
        if self.cross and cross_k is not None and cross_v is not None:
            qx = self._split(self.q_x(self.n2(x)))
            x = x + self.proj_x(self._merge(F.scaled_dot_product_attention(qx, cross_k, cross_v)))
        x = x + self.mlp(self.n3(x))
        return x, k, v


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class ImageEncoder(nn.Module):
    """Conv stem (stride 8, two skips) + transformer over the token grid; shared by 2D images and slices."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        d = cfg.d
        self.s1 = _conv(1 + 2 * cfg.slice_context + cfg.dot + cfg.water, 32, 2)
        self.s2 = _conv(32, 64, 2)
        self.s3 = nn.Sequential(_conv(64, d, 2), nn.Conv2d(d, d, 1))
        grid = cfg.image_size // cfg.stride
        self.pos = nn.Parameter(torch.randn(1, d, grid, grid) * 0.02)
        self.modality = nn.Embedding(len(MODALITIES), d)
        # small like the positions: at the default N(0, 1) this constant outweighed the image features ~10x,
        # so after LayerNorm every token looked alike and nothing downstream could learn
        nn.init.normal_(self.modality.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cross=False) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(d)

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N,C,H,W): the image in [0,1], then C-1 differences to its neighbouring slices (``with_context``);
        modality (N,) long -> tokens (N,h*w,d), grid (N,d,h,w), skips at /2 and /4."""
        x = x * 2.0 - 1.0 if x.shape[1] == 1 else torch.cat([x[:, :1] * 2.0 - 1.0, x[:, 1:] * 2.0], 1)
        if self.training:  # oneDNN's backward of a 1-channel NCHW conv: 0.52 s vs 3 ms channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        f1 = self.s1(x).contiguous()
        f2 = self.s2(f1)
        g = self.s3(f2)
        h, w = g.shape[-2], g.shape[-1]
        pos = self.pos if self.pos.shape[-1] == w else F.interpolate(self.pos, size=(h, w), mode="bilinear")
        g = g + pos + self.modality(modality)[:, :, None, None]
        t = g.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t, _, _ = blk(t)
        t = self.norm(t)
        grid = t.transpose(1, 2).reshape(g.shape)
        return t, grid, f1, f2


class Heads(nn.Module):
    """Per-image heads: label attention pooling + logits, CenterNet detection, segmentation with skips."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        d, n = cfg.d, cfg.n_labels
        self.label_queries = nn.Parameter(torch.randn(n, d) * 0.02)
        self.label_key = nn.Linear(d, d)
        self.label_out = nn.Parameter(torch.randn(n, d) / math.sqrt(d))  # unit-scale token scores
        self.label_bias = nn.Parameter(torch.zeros(n))
        self.seg_gain = nn.Parameter(torch.zeros(n))  # starts decoupled; learns how much the masks tell
        # whole-image evidence (effusion, pneumothorax, cardiomegaly are shapes and sizes, not spots): mean- and
        # max-pooled tokens through an MLP; its logit adds to the attention-pooled one
        self.global_cls: nn.Module | None = None
        if cfg.global_head:
            self.global_cls = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, n))
        self.det = nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU(), nn.Conv2d(d, n + 4, 1))  # tokens already see context
        self.reduce = nn.Conv2d(d, 32, 1)  # keep the upsampling path cheap: it dominated the FLOPs
        # the coarse cell map (1 channel on the token grid) -> 16 channels; no norm: its level is the evidence
        self.cell_conv: nn.Module | None = None
        cell_ch = 0
        if cfg.coarse and cfg.coarse_seg:
            cell_ch = 16
            self.cell_conv = nn.Sequential(nn.Conv2d(1, cell_ch, 3, 1, 1), nn.GELU())
        self.up1 = _conv(32 + cell_ch + 64, 32, 1)
        self.up2 = _conv(32 + 32, 16, 1)
        self.seg_out = nn.Conv2d(16, n, 1)
        det_out = self.det[2]
        assert isinstance(det_out, nn.Conv2d) and det_out.bias is not None
        nn.init.constant_(det_out.bias[:n], -2.19)  # CenterNet prior: sigmoid = 0.1

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Label-wise attention pooling: (N,T,d) -> label features (N,L,d), logits (N,L), attention (N,L,T).

        Each token gets its own evidence score per label; the attention adds that score to a learned
        query-key term, so from the first step a label attends to the tokens that carry its evidence (a small
        nodule is a few tokens of 256: plain averaging, the old start, drowned it). The image logit is the
        attention-weighted mean of the token scores (soft-max pooling, multiple-instance style).
        """
        keys = self.label_key(tokens)
        scores = torch.einsum("ld,ntd->nlt", self.label_out, tokens)  # per-token evidence (N,L,T)
        query = torch.einsum("ld,ntd->nlt", self.label_queries, keys) / math.sqrt(keys.shape[-1])
        att = torch.softmax(query + scores, -1)
        feats = torch.einsum("nlt,ntd->nld", att, tokens)
        logits = (att * scores).sum(-1) + self.label_bias
        if self.global_cls is not None:
            logits = logits + self.global_cls(torch.cat([tokens.mean(1), tokens.amax(1)], -1))
        return feats, logits, att

    def forward(
        self,
        tokens: torch.Tensor,
        grid: torch.Tensor,
        f1: torch.Tensor,
        f2: torch.Tensor,
        cell_map: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``cell_map`` (N,1,h,w): standardised coarse cells on the token grid, read by the segmentation decoder."""
        feats, logits, att = self.pool(tokens)
        # where each label looks: the attention's centroid on the token grid, (x, y) in [0, 1]
        h, w = grid.shape[-2], grid.shape[-1]
        ys = (torch.arange(h, dtype=tokens.dtype, device=tokens.device) + 0.5) / h
        xs = (torch.arange(w, dtype=tokens.dtype, device=tokens.device) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(h * w, 2)
        where = att @ coords
        det = self.det(grid)
        n = logits.shape[1]
        r = self.reduce(grid)
        if self.cell_conv is not None:  # a module test may call the heads without a map: no evidence then
            cm = cell_map if cell_map is not None else torch.zeros_like(r[:, :1])
            r = torch.cat([r, self.cell_conv(cm)], 1)
        u = F.interpolate(r, scale_factor=2.0, mode="bilinear")
        u = self.up1(torch.cat([u, f2], 1))
        u = F.interpolate(u, scale_factor=2.0, mode="bilinear")
        u = self.up2(torch.cat([u, f1], 1))
        seg = F.interpolate(self.seg_out(u), scale_factor=2.0, mode="bilinear")
        # the segmentation is also evidence for the label: the mean of its top-k logits joins the image logit
        top = torch.topk(seg.flatten(2), SEG_TOPK, dim=-1).values.mean(-1)
        logits = logits + self.seg_gain * top
        return {
            "label_feats": feats,
            "where": where,
            "logits": logits,
            "heatmap": det[:, :n],
            "size": det[:, n : n + 2],
            "offset": det[:, n + 2 : n + 4],
            "seg": seg,
        }


class TextDecoder(nn.Module):
    """Autoregressive decoder with tied embeddings; K/V of self-attention are cached by the caller."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d)
        self.pos = nn.Embedding(cfg.max_len, cfg.d)
        self.blocks = nn.ModuleList(Block(cfg.d, cfg.heads, cfg.mlp_ratio, cross=True) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.d)
        nn.init.normal_(self.tok.weight, std=0.02)  # tied output layer: unit-variance init gives logits ~ 10x too big
        nn.init.normal_(self.pos.weight, std=0.02)
        self.copy_q: nn.Linear | None = None
        self.copy_gate: nn.Linear | None = None
        if cfg.copy:
            # copy attention: a query from the output state against the last block's self-attention keys (cached
            # already), averaged over heads; the gate starts at p(generate) = 0.88 so a trained decoder keeps
            # its answers until the copy pays
            self.copy_q = nn.Linear(cfg.d, cfg.d)
            self.copy_gate = nn.Linear(cfg.d, 1)
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.constant_(self.copy_gate.bias, 2.0)

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual memory (N,M,d) -> stacked cross K and V, each (layers, N, heads, M, dh)."""
        ks, vs = self.cross_kv_layers(memory)
        return torch.stack(ks), torch.stack(vs)

    def cross_kv_layers(self, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each block's cross K and V (N, heads, M, dh), unstacked: in training, a layer's slice of a stacked
        tensor sends back a zero-filled gradient of the whole stack (a quarter of a stage-2 step went to that)."""
        blocks: list[Block] = list(self.blocks)  # type: ignore[arg-type]  # ModuleList loses the element type
        ks, vs = zip(*(blk.cross_kv(memory) for blk in blocks), strict=True)
        return list(ks), list(vs)

    def _hidden(
        self,
        ids: torch.Tensor,
        cross_k: torch.Tensor | Sequence[torch.Tensor],
        cross_v: torch.Tensor | Sequence[torch.Tensor],
        past_k: torch.Tensor | None,
        past_v: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The blocks: ids (N,t) after P cached positions -> output states (N,t,d), each block's present K and V
        (N,heads,P+t,dh) and the causal mask (t,P+t). Stacked by the caller, after the outputs: the exported
        graphs' op order, which ``models.readback`` matches weights by, stays what it was. No past (training):
        P = 0 without concatenating an empty cache."""
        t = ids.shape[1]
        p = 0 if past_k is None else past_k.shape[3]
        q_pos = torch.arange(t, device=ids.device) + p
        x = self.tok(ids) + self.pos(q_pos)[None]
        k_pos = torch.arange(p + t, device=ids.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        pk, pv = [], []
        for i, blk in enumerate(self.blocks):
            past = (None, None) if past_k is None or past_v is None else (past_k[i], past_v[i])
            x, k, v = blk(x, mask, *past, cross_k[i], cross_v[i])
            pk.append(k)
            pv.append(v)
        return self.norm(x), pk, pv, mask

    def forward(
        self,
        ids: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        past_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (N,t); past K/V (layers,N,heads,P,dh), P may be 0 -> logits (N,t,V), present K/V (P+t). With the
        copy head, ``past_ids`` (N,P) are the tokens of the cached positions and the "logits" are log
        probabilities of the mixture (greedy decoding and cross-entropy treat both alike)."""
        h, pk, pv, mask = self._hidden(ids, cross_k, cross_v, past_k, past_v)
        logits = h @ self.tok.weight.t()
        if self.copy_q is not None and self.copy_gate is not None:
            if past_ids is None:
                past_ids = ids[:, :0]
            all_ids = torch.cat([past_ids, ids], dim=1)
            attn = self._copy_attention(h, pk[-1], mask)
            copy = attn @ F.one_hot(all_ids, self.cfg.vocab_size).to(attn.dtype)
            logits = self._mix_copy(h, logits, copy)
        return logits, torch.stack(pk), torch.stack(pv)

    def teacher_forced(
        self,
        ids: torch.Tensor,
        cross_k: Sequence[torch.Tensor],
        cross_v: Sequence[torch.Tensor],
        at: torch.Tensor,
    ) -> torch.Tensor:
        """Training's pass over whole sequences ids (N,T) that keeps only the outputs at ``at`` (N,T) bool ->
        (K,V), K = at.sum(), row-major: what ``forward`` gives at those positions. Stage 2 learns from the few
        answer tokens after a long prompt; the vocabulary-sized work (output layer, softmax, copy distribution)
        of every prompt position was most of a step's compute."""
        n, t = ids.shape
        h, pk, _, mask = self._hidden(ids, cross_k, cross_v, None, None)
        rows = h[at]
        logits = rows @ self.tok.weight.t()
        if self.copy_q is None or self.copy_gate is None:
            return logits
        attn = self._copy_attention(h, pk[-1], mask)[at]  # (K,T): cheap at every position, kept at ``at``
        source = ids[:, None, :].expand(n, t, t)[at]  # each kept row's sequence
        copy = logits.new_zeros(logits.shape).scatter_add_(1, source, attn)
        return self._mix_copy(rows, logits, copy)

    def _copy_attention(self, h: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Where the copy head looks: a query from each output state (N,t,d) against the last block's
        self-attention keys (N,H,P+t,dh), softmax over the positions so far, averaged over heads -> (N,t,P+t)."""
        assert self.copy_q is not None
        n, t, d = h.shape
        heads = keys.shape[1]
        q = self.copy_q(h).reshape(n, t, heads, d // heads).transpose(1, 2)
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(d // heads)
        return scores.masked_fill(~mask, float("-inf")).softmax(-1).mean(1)

    def _mix_copy(self, h: torch.Tensor, logits: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        """log(g * softmax(logits) + (1 - g) * copy), ``copy`` the copy attention put on its token ids."""
        assert self.copy_gate is not None
        gate = torch.sigmoid(self.copy_gate(h))
        return torch.log((gate * logits.softmax(-1) + (1 - gate) * copy).clamp_min(1e-9))


class UnifiedModel(nn.Module):
    """All tasks and modalities in one network (see the module docstring)."""

    coarse_mean: torch.Tensor  # buffers of the coarse pathway (modalities, cells)
    coarse_std: torch.Tensor

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d, cfg.n_labels
        self.encoder = ImageEncoder(cfg)
        self.heads = Heads(cfg)
        self.slice_score = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.label_embed = nn.Parameter(torch.randn(n, d) * 0.02)
        # presence as two clearly separate directions at the scale of the features: at std 0.02 the decoder
        # never picked the heads' probability up and answered VQA from the question alone
        self.present_embed = nn.Parameter(torch.randn(d) * 0.5)
        self.absent_embed = nn.Parameter(torch.randn(d) * 0.5)
        self.where_proj = nn.Linear(3, d)  # label attention centroid (x, y, slice) -> memory
        self.mem_proj = nn.Linear(d, d)
        self.mem_type = nn.Parameter(torch.randn(2, d) * 0.02)  # 0 = image token, 1 = label token
        self.decoder = TextDecoder(cfg)
        self.align_img = nn.Linear(d, d)  # stage-1 image <-> report alignment (CLIP-style)
        self.align_txt = nn.Linear(d, d)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # coarse pathway: pooled pixels (+ the modality) -> per-label logits that add to the heads' logits
        self.coarse_in: nn.Linear | None = None
        if cfg.coarse:
            cells = cfg.coarse * cfg.coarse
            self.coarse_in = nn.Linear(cells, d)
            self.coarse_mod = nn.Embedding(len(MODALITIES), d)
            self.coarse_out = nn.Sequential(nn.GELU(), nn.Linear(d, n))
            # per-modality standardisation of each pooled cell, fitted on the training images (fit_coarse_stats).
            # On raw pooled pixels this pathway alone learned pneumothorax to AUROC 0.56 in 924 steps;
            # standardised, 0.91-0.94 (same steps, same optimiser)
            self.register_buffer("coarse_mean", torch.zeros(len(MODALITIES), cells))
            self.register_buffer("coarse_std", torch.ones(len(MODALITIES), cells))

    def coarse_pooled(self, image: torch.Tensor) -> torch.Tensor:
        """Images or slices (N,C,S,S) in [0, 1] -> (N, coarse²) average-pooled cells of channel 0 in [-1, 1]."""
        return F.avg_pool2d(image[:, :1] * 2.0 - 1.0, image.shape[-1] // self.cfg.coarse).flatten(1)

    def with_context(
        self, volume: torch.Tensor, dot: torch.Tensor | None = None, ct: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Volumes (N,D,S,S) -> slices (N*D, C, S, S): each slice, then itself minus the slice k..1 below and
        1..k above (edges repeated), k = ``slice_context``, then its first ``cfg.dot`` fine-grid channels of
        ``dot`` (N,K,D,S,S), or (N,D,S,S) for one; zeros where ``dot`` is None; then (``cfg.water``) the slice's
        ``water_likeness`` where ``ct`` (N,) is true, else zeros. Radiographs (N,1,S,S) get zero differences."""
        k = self.cfg.slice_context
        n, depth, s, _ = volume.shape
        flat = volume.reshape(n * depth, 1, s, s)
        if k == 0:
            parts = [flat]
        elif depth == 1:
            parts = [flat, torch.zeros_like(flat).repeat(1, 2 * k, 1, 1)]
        else:
            padded = torch.cat([volume[:, :1].expand(-1, k, -1, -1), volume, volume[:, -1:].expand(-1, k, -1, -1)], 1)
            offsets = [o for o in range(-k, k + 1) if o]
            diffs = [volume - padded[:, k + o : k + o + depth] for o in offsets]
            parts = [torch.stack([volume, *diffs], 2).reshape(n * depth, 1 + 2 * k, s, s)]
        if self.cfg.dot:
            k_fine = self.cfg.dot
            if dot is None:
                parts.append(flat.new_zeros(n * depth, k_fine, s, s))
            else:
                stacked = dot[:, None] if dot.dim() == 4 else dot
                if stacked.shape[1] < k_fine:  # a kind with fewer channels (PET: one) reads zeros past them
                    stacked = F.pad(stacked, (0, 0, 0, 0, 0, 0, 0, k_fine - stacked.shape[1]))
                parts.append(stacked[:, :k_fine].transpose(1, 2).reshape(n * depth, k_fine, s, s))
        if self.cfg.water:
            if ct is None:
                parts.append(torch.zeros_like(flat))
            else:
                parts.append(water_likeness(flat) * ct.to(flat.dtype).repeat_interleave(depth).view(-1, 1, 1, 1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    @torch.no_grad()
    def fit_coarse_stats(self, modality: int, images: torch.Tensor) -> None:
        """Sets one modality's cell mean and std from training images or slices (N,1,S,S). The std is floored at
        0.05: CT and PET have cells that are constant air, which intensity jitter would otherwise blow up."""
        pooled = self.coarse_pooled(images)
        self.coarse_mean[modality] = pooled.mean(0)
        self.coarse_std[modality] = pooled.std(0).clamp(min=COARSE_STD_FLOOR)

    def cell_map(self, cells: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Standardised cells (N, c²) -> a clipped map (N,1,h,w) on a grid of the decoder (pooled when finer)."""
        c = self.cfg.coarse
        m = cells.clamp(-CELL_CLIP, CELL_CLIP).reshape(cells.shape[0], 1, c, c)
        if c > h:
            return F.avg_pool2d(m, c // h)
        if c < h:
            return F.interpolate(m, size=(h, w), mode="nearest")
        return m

    def _encode(self, image: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images or slices (N,C,S,S) (``with_context``) -> tokens and per-image heads; the coarse pathway's logits
        join the heads' and its standardised cells, as a map, the segmentation decoder's input."""
        tokens, grid, f1, f2 = self.encoder(image, modality)
        if self.coarse_in is None:
            return tokens, self.heads(tokens, grid, f1, f2)
        cells = (self.coarse_pooled(image) - self.coarse_mean[modality]) / self.coarse_std[modality]
        # on the token grid: a 64-pixel slice averages 2 x 2 cells per token (at stride 4 instead, session 7 measured
        # radiograph Dice 0.556 -> 0.593 but CT AUROC 0.870 -> 0.852 and lower rendered-text F1 on all three kinds)
        out = self.heads(tokens, grid, f1, f2, self.cell_map(cells, grid.shape[-2], grid.shape[-1]))
        out["logits"] = out["logits"] + self.coarse_out(self.coarse_in(cells) + self.coarse_mod(modality))
        return tokens, out

    # ---- visual memory for the decoder -------------------------------------------------------------------
    def _memory(
        self, tokens: torch.Tensor, label_feats: torch.Tensor, probs: torch.Tensor, where: torch.Tensor
    ) -> torch.Tensor:
        """Image tokens + one token per label carrying the heads' probability and where the label looked
        (x, y, slice in [0, 1]) — "structured first": the decoder reads the heads instead of re-deriving them."""
        img = self.mem_proj(tokens) + self.mem_type[0]
        p = probs[..., None]
        lab = (
            self.label_embed[None]
            + label_feats
            + p * self.present_embed
            + (1 - p) * self.absent_embed
            + self.where_proj(where)
            + self.mem_type[1]
        )
        return torch.cat([img, lab], dim=1)

    # ---- 2D -------------------------------------------------------------------------------------------------
    def forward_2d(self, image: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (N,1,S,S) -> logits (N,L), heatmap/size/offset (N,·,S/8,S/8), seg (N,L,S,S), memory, embedding."""
        tokens, out = self._encode(self.with_context(image), modality)
        probs = torch.sigmoid(out["logits"])
        where = torch.cat([out["where"], torch.full_like(out["where"][..., :1], 0.5)], -1)
        out["memory"] = self._memory(tokens, out["label_feats"], probs, where)
        out["mem_tokens"], out["mem_feats"], out["mem_where"] = tokens, out["label_feats"], where
        out["embedding"] = tokens.mean(1)
        return out

    # ---- 3D -------------------------------------------------------------------------------------------------
    def forward_3d(
        self, volume: torch.Tensor, modality: torch.Tensor, dot: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """volume (N,D,S,S), modality (N,), fine-grid channels (N,K,D,S,S) or None (zeros) -> per-slice heads (N,D,...),
        slice relevance (N,D), volume logits (N,L)."""
        n, depth = volume.shape[:2]
        tokens, out = self._encode(self.with_context(volume, dot, modality == 1), modality.repeat_interleave(depth))
        t, d = tokens.shape[1], tokens.shape[2]
        tok = tokens.reshape(n, depth, t, d)
        slice_emb = tok.mean(2)
        rel_logit = self.slice_score(slice_emb).squeeze(-1)  # (N,D)
        rel = torch.softmax(rel_logit, dim=1)
        slice_logits = out["logits"].reshape(n, depth, -1)  # (N,D,L)
        # soft-max pooling over slices per label: a lesion on any slice makes the volume positive
        w = torch.softmax(slice_logits, dim=1)
        vol_logits = (w * slice_logits).sum(1)
        feats = out["label_feats"].reshape(n, depth, -1, d)
        vol_feats = (w[..., None] * feats).sum(1)
        z = (torch.arange(depth, dtype=volume.dtype, device=volume.device) + 0.5) / depth
        where_xy = (w[..., None] * out["where"].reshape(n, depth, -1, 2)).sum(1)
        where = torch.cat([where_xy, (w * z[None, :, None]).sum(1)[..., None]], -1)
        k = self.cfg.top_k
        top = torch.topk(rel_logit, k, dim=1).indices  # (N,k)
        idx = top[:, :, None, None].expand(n, k, t, d)
        top_tokens = torch.gather(tok, 1, idx).reshape(n, k * t, d)
        probs = torch.sigmoid(vol_logits)
        res = {
            "logits": vol_logits,
            "slice_logits": slice_logits,
            "relevance_logit": rel_logit,
            "relevance": rel,
            "top_slices": top,
            "heatmap": out["heatmap"].reshape(n, depth, *out["heatmap"].shape[1:]),
            "size": out["size"].reshape(n, depth, *out["size"].shape[1:]),
            "offset": out["offset"].reshape(n, depth, *out["offset"].shape[1:]),
            "seg": out["seg"].reshape(n, depth, *out["seg"].shape[1:]),
            "memory": self._memory(top_tokens, vol_feats, probs, where),
            "mem_tokens": top_tokens,
            "mem_feats": vol_feats,
            "mem_where": where,
            "embedding": (rel[..., None] * slice_emb).sum(1),
        }
        return res

    def empty_past(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty KV cache on the model's device (a CPU cache beside CUDA weights fails at the first step)."""
        cfg = self.cfg
        shape = (cfg.dec_layers, n, cfg.heads, 0, cfg.d // cfg.heads)
        device = self.logit_scale.device
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def text_logits(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder pass for training: ids (N,T), memory (N,M,d) -> logits (N,T,V)."""
        ck, cv = self.decoder.cross_kv(memory)
        pk, pv = self.empty_past(ids.shape[0])
        logits, _, _ = self.decoder(ids, ck, cv, pk.to(memory), pv.to(memory))
        return logits

    def text_loss(self, ids: torch.Tensor, targets: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the targets (N,T), -100 where none (prompt, padding): the mean over
        the target tokens that ``text_logits`` and ``F.cross_entropy(ignore_index=-100)`` give, computed only
        where there is a target."""
        ck, cv = self.decoder.cross_kv_layers(memory)
        at = targets != -100
        return F.cross_entropy(self.decoder.teacher_forced(ids, ck, cv, at), targets[at])

    def text_embedding(self, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Mean of token embeddings of a report (stage-1 alignment target)."""
        keep = (ids != pad_id).float()[..., None]
        e = (self.decoder.tok(ids) * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
