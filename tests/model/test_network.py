"""Pieces of the network and the recipe that the metrics depend on but a smoke run would not catch."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch import nn

from models.labels import LABEL_KEYS
from models.network import CELL_CLIP, COARSE_STD_FLOOR, Heads, NetConfig, UnifiedModel
from models.train import SEG_POS_WEIGHT, kind_schedule, lesion_weights, seg_loss, seg_pos_weights

TINY = NetConfig(n_labels=3, vocab_size=40, d=16, heads=2, enc_layers=1, dec_layers=1, max_len=16)


@pytest.mark.parametrize("steps", [1, 7, 100, 2600])
def test_kind_schedule_keeps_every_prefix_within_one_step_of_its_share(steps: int) -> None:
    share = {"cxr": 0.42, "ct": 0.33, "pet": 0.25}
    schedule = kind_schedule(["cxr", "ct", "pet"], share, steps)
    assert len(schedule) == steps
    seen: Counter[str] = Counter()
    for i, kind in enumerate(schedule, start=1):
        seen[kind] += 1
        for k, w in share.items():
            assert abs(seen[k] - w * i) <= 1.0, (i, k, seen)


def test_kind_schedule_renormalises_over_the_kinds_present() -> None:
    assert kind_schedule(["cxr"], {"cxr": 0.42, "ct": 0.33}, 5) == ["cxr"] * 5
    assert Counter(kind_schedule(["ct", "pet"], {}, 10)) == {"ct": 5, "pet": 5}  # no shares: even
    assert Counter(kind_schedule(["ct", "pet"], {"ct": 3.0, "pet": 1.0}, 8)) == {"ct": 6, "pet": 2}


def _peaked_heads(cfg: NetConfig, label: int) -> Heads:
    """Heads whose label ``label`` scores only feature 0: attention goes to the token that carries it."""
    heads = Heads(cfg)
    with torch.no_grad():
        heads.label_out.zero_()
        heads.label_queries.zero_()
        heads.label_out[label, 0] = 50.0
    return heads


def test_seg_loss_scores_dice_only_for_labels_masked_in_the_batch() -> None:
    # logits 0 (p = 0.5) everywhere: an absent label costs its BCE (log 2 per pixel, twice) and no Dice; a label
    # with a mask adds its soft Dice; a label the kind lacks (keep False) adds nothing
    logits = torch.zeros(2, 3, 8, 8)
    absent = torch.zeros(2, 3, 8, 8)
    keep = torch.tensor([True, True, False])
    log2 = torch.log(torch.tensor(2.0))
    assert seg_loss(logits, absent, keep, 1).item() == pytest.approx(2 * log2.item(), rel=1e-6)

    gt = absent.clone()
    gt[0, 0, 2:4, 2:4] = 1.0  # 4 of the 256 pixels of label 0 across the batch
    pixels = 2 * 8 * 8
    bce = log2 * (pixels * 2 - 4 + 4 * SEG_POS_WEIGHT) / (2 * pixels)  # mean over the two kept labels
    dice = 1 - (2 * 0.5 * 4 + 1) / (0.5 * pixels + 4 + 1)  # label 0 only: label 1 has no mask in the batch
    assert seg_loss(logits, gt, keep, 1).item() == pytest.approx(2 * bce.item() + dice, rel=1e-6)


def test_seg_loss_weights_positive_pixels_per_label() -> None:
    # the same 4 positive pixels under label 0 cost (w - 1) * log 2 more each when label 0's weight is w
    logits = torch.zeros(2, 3, 8, 8)
    gt = torch.zeros(2, 3, 8, 8)
    gt[0, 0, 2:4, 2:4] = 1.0
    keep = torch.tensor([True, True, True])
    base = seg_loss(logits, gt, keep, 1)
    heavier = seg_loss(logits, gt, keep, 1, torch.tensor([30.0, SEG_POS_WEIGHT, SEG_POS_WEIGHT]))
    pixels = 2 * 8 * 8 * 3  # the BCE is a mean over the kept labels' pixels, counted twice
    extra = 2 * 4 * (30.0 - SEG_POS_WEIGHT) * torch.log(torch.tensor(2.0)) / pixels
    assert (heavier - base).item() == pytest.approx(extra.item(), rel=1e-5)
    # a weight on a label with no positive pixel changes nothing
    other = seg_loss(logits, gt, keep, 1, torch.tensor([SEG_POS_WEIGHT, 30.0, SEG_POS_WEIGHT]))
    assert other.item() == pytest.approx(base.item(), rel=1e-6)


def test_lesion_weights_give_each_small_lesion_the_say_of_a_reference_one() -> None:
    # volumes (N, D, L, h, w): under label 0 one lesion of 1 voxel and one of 2 x 2 x 2 = 8, under label 1 a
    # large one; reference 16 voxels, cap 6
    gt = torch.zeros(1, 4, 2, 8, 8)
    gt[0, 1, 0, 6, 6] = 1.0
    gt[0, 1:3, 0, 1:3, 1:3] = 1.0
    gt[0, :, 1, :, :4] = 1.0
    w = lesion_weights(gt, 2, 16.0, 6.0)
    assert w.shape == gt.shape
    assert w[0, 1, 0, 6, 6] == 6.0  # 16 / 1, capped
    assert torch.all(w[0, 1:3, 0, 1:3, 1:3] == 2.0)  # 16 / 8
    assert torch.all(w[0, :, 1] == 1.0)  # larger than the reference: as before
    assert torch.all(w[gt == 0] == 1.0)  # off the lesions: as before
    # in the loss, each positive pixel's BCE is scaled by its weight; all-ones weights change nothing
    logits, keep = torch.zeros_like(gt), torch.tensor([True, True])
    assert seg_loss(logits, gt, keep, 2, pixel_weights=torch.ones_like(gt)).item() == pytest.approx(
        seg_loss(logits, gt, keep, 2).item(), rel=1e-6
    )
    extra = seg_loss(logits, gt, keep, 2, pixel_weights=w) - seg_loss(logits, gt, keep, 2)
    weighted_more = 5 * 1 + 1 * 8  # (w - 1) summed over the small lesions' voxels
    pixels = gt.numel()  # the BCE is a mean over the kept labels' pixels, counted twice
    expected = 2 * weighted_more * SEG_POS_WEIGHT * torch.log(torch.tensor(2.0)) / pixels
    assert extra.item() == pytest.approx(expected.item(), rel=1e-5)


def test_seg_pos_weights_follow_the_label_order_and_reject_unknown_labels() -> None:
    weights = seg_pos_weights({"pneumothorax": 30.0})
    assert weights.shape == (len(LABEL_KEYS),)
    assert weights[LABEL_KEYS.index("pneumothorax")] == 30.0
    assert all(w == SEG_POS_WEIGHT for i, w in enumerate(weights.tolist()) if LABEL_KEYS[i] != "pneumothorax")
    with pytest.raises(ValueError, match="pneumothorx"):
        seg_pos_weights({"pneumothorx": 30.0})


def test_label_attention_centroid_is_x_then_y_of_the_evidence() -> None:
    cfg = TINY
    heads = _peaked_heads(cfg, label=1)
    h = w = 16
    tokens = torch.zeros(1, h * w, cfg.d)
    row, col = 3, 12  # upper part of the image, patient's left (image right)
    tokens[0, row * w + col, 0] = 1.0
    grid = tokens.transpose(1, 2).reshape(1, cfg.d, h, w)
    f1, f2 = torch.zeros(1, 32, 64, 64), torch.zeros(1, 64, 32, 32)
    where = heads(tokens, grid, f1, f2)["where"][0, 1]
    assert where.tolist() == pytest.approx([(col + 0.5) / w, (row + 0.5) / h], abs=1e-3)


def test_memory_label_tokens_carry_presence_and_where() -> None:
    torch.manual_seed(0)
    model = UnifiedModel(TINY).eval()
    tokens, feats = torch.randn(1, 4, TINY.d), torch.randn(1, TINY.n_labels, TINY.d)
    where = torch.full((1, TINY.n_labels, 3), 0.5)
    base = model._memory(tokens, feats, torch.zeros(1, TINY.n_labels), where)
    present = model._memory(tokens, feats, torch.tensor([[0.0, 1.0, 0.0]]), where)
    moved = model._memory(tokens, feats, torch.zeros(1, TINY.n_labels), where + torch.tensor([0.3, 0.0, 0.0]))
    changed = (present - base).abs().sum(-1)[0]
    assert changed[:4].max() == 0 and changed[4 + 1] > 1.0 and changed[4] == 0 and changed[4 + 2] == 0
    assert (moved - base)[0, 4:].abs().sum() > 0 and (moved - base)[0, :4].abs().sum() == 0


def test_where_stays_in_the_unit_cube_and_radiographs_sit_mid_slice() -> None:
    torch.manual_seed(0)
    model = UnifiedModel(TINY).eval()
    volume = torch.zeros(1, 32, 64, 64)
    out = model.forward_3d(volume, torch.tensor([1]))
    assert out["mem_where"].shape == (1, TINY.n_labels, 3)
    assert ((out["mem_where"] >= 0) & (out["mem_where"] <= 1)).all()
    out2 = model.forward_2d(torch.zeros(2, 1, 128, 128), torch.zeros(2, dtype=torch.long))
    assert torch.all(out2["mem_where"][..., 2] == 0.5)  # radiographs have no slice axis


def _coarse_part(model: UnifiedModel, image: torch.Tensor) -> torch.Tensor:
    """The coarse pathway's share of the 2D logits: logits minus those with its output layer silenced."""
    with torch.no_grad():
        full = model.forward_2d(image, torch.zeros(image.shape[0], dtype=torch.long))["logits"]
        out_layer = model.coarse_out[1]
        saved = out_layer.weight.clone(), out_layer.bias.clone()
        out_layer.weight.zero_()
        out_layer.bias.zero_()
        heads_only = model.forward_2d(image, torch.zeros(image.shape[0], dtype=torch.long))["logits"]
        out_layer.weight.copy_(saved[0])
        out_layer.bias.copy_(saved[1])
    return full - heads_only


def test_coarse_pathway_reads_only_the_pooled_image_and_can_be_off() -> None:
    assert UnifiedModel(replace(TINY, coarse=0)).coarse_in is None  # bundles before it rebuild unchanged
    torch.manual_seed(0)
    model = UnifiedModel(TINY).eval()
    image = torch.rand(1, 1, 128, 128)
    base = _coarse_part(model, image)
    shuffled = image.clone()  # pixels moved within one 8x8 pooling cell: same pooled image
    shuffled[..., 40:48, 40:48] = image[..., 40:48, 40:48].flip(-1).flip(-2)
    assert torch.allclose(_coarse_part(model, shuffled), base, atol=1e-5)
    brighter = image.clone()  # one cell's mean changes
    brighter[..., 40:48, 40:48] += 0.5
    assert (_coarse_part(model, brighter) - base).abs().max() > 1e-4


def test_slice_context_tells_a_dot_that_ends_from_a_vessel_that_goes_on() -> None:
    """2.5D input: a slice is encoded with its differences to its neighbours, so a bright dot on one slice (a
    nodule) and a dot present on every slice (a vessel crossing them) no longer look alike."""
    assert UnifiedModel(TINY).encoder.s1[0].in_channels == 1  # bundles before it rebuild unchanged
    model = UnifiedModel(replace(TINY, slice_context=1))
    assert model.encoder.s1[0].in_channels == 3
    volume = torch.zeros(1, 6, 64, 64)
    volume[0, :, 10, 10] = 0.8  # vessel through every slice
    volume[0, 3, 40, 40] = 0.8  # nodule on slice 3 only
    x = model.with_context(volume)
    assert x.shape == (6, 3, 64, 64)
    assert torch.equal(x[:, 0], volume[0])  # channel 0 is the slice itself
    assert x[:, 1:, 10, 10].abs().max() == 0  # the vessel: no difference to either neighbour
    assert x[3, 1, 40, 40] == pytest.approx(0.8) and x[3, 2, 40, 40] == pytest.approx(0.8)
    assert x[2, 2, 40, 40] == pytest.approx(-0.8) and x[4, 1, 40, 40] == pytest.approx(-0.8)  # seen from around
    assert x[0, 1].abs().max() == 0 and x[5, 2].abs().max() == 0  # the end slices repeat themselves
    radiograph = torch.rand(2, 1, 128, 128)
    r = model.with_context(radiograph)
    assert r.shape == (2, 3, 128, 128) and torch.equal(r[:, 0], radiograph[:, 0]) and r[:, 1:].abs().max() == 0
    # the coarse pathway reads only the slice itself
    assert torch.equal(model.coarse_pooled(x), model.coarse_pooled(volume[0][:, None]))


def test_fine_channels_come_last_and_are_zero_without_them() -> None:
    """``NetConfig.dot``: CT slices carry their first K fine-grid channels after the slice and its differences;
    radiographs and volumes given none get zeros there, so the same encoder serves all three; a volume given fewer
    (PET's one, ``NetConfig.pet_dot``) gets zeros after them. One channel may come as (N,D,S,S) (0.17.0's
    layout)."""
    model = UnifiedModel(replace(TINY, slice_context=1, dot=2))
    assert model.encoder.s1[0].in_channels == 5
    volume, fine = torch.rand(2, 5, 64, 64), torch.rand(2, 3, 5, 64, 64)  # a third channel the model does not take
    x = model.with_context(volume, fine)
    assert x.shape == (10, 5, 64, 64)
    assert torch.equal(x[:, 3], fine[:, 0].reshape(10, 64, 64)) and torch.equal(x[:, 4], fine[:, 1].reshape(10, 64, 64))
    assert torch.equal(x[:, :3], model.with_context(volume)[:, :3])
    assert model.with_context(volume)[:, 3:].abs().max() == 0
    assert model.with_context(torch.rand(2, 1, 128, 128))[:, 3:].abs().max() == 0
    fewer = model.with_context(volume, fine[:, :1])
    assert torch.equal(fewer[:, 3], fine[:, 0].reshape(10, 64, 64)) and fewer[:, 4].abs().max() == 0
    out = model.forward_3d(volume, torch.tensor([1, 1]), fine)
    assert out["logits"].shape == (2, TINY.n_labels)
    assert not torch.equal(out["logits"], model.forward_3d(volume, torch.tensor([1, 1]))["logits"])
    one = UnifiedModel(replace(TINY, slice_context=1, dot=1))
    assert torch.equal(one.with_context(volume, fine[:, 0]), one.with_context(volume, fine[:, :1]))


def test_the_water_channel_lights_fluid_on_ct_only() -> None:
    """``NetConfig.water``: CT slices carry their water likeness last (fluid at 10 HU 1, water 0.6; muscle at 40 HU,
    lung and fat 0), computed in the graph from the slice; PET volumes and radiographs get zeros there."""
    model = UnifiedModel(replace(TINY, slice_context=1, dot=2, water=1))
    assert model.encoder.s1[0].in_channels == 6
    hu = torch.tensor([10.0, 40.0, -100.0, -850.0, 0.0])
    volume = ((hu + 1000.0) / 1400.0).view(1, 5, 1, 1).expand(2, 5, 64, 64).contiguous()
    x = model.with_context(volume, None, torch.tensor([True, False]))
    band = x[:, 5].reshape(2, 5, 64, 64)[:, :, 0, 0]
    torch.testing.assert_close(band[0], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.6]), atol=1e-4, rtol=0)
    assert band[1].abs().max() == 0 and model.with_context(volume)[:, 5].abs().max() == 0
    assert model.with_context(torch.rand(2, 1, 128, 128))[:, 5].abs().max() == 0
    ct, pet = (model.forward_3d(volume, torch.tensor([m, m]))["logits"] for m in (1, 2))
    assert not torch.equal(ct, pet)


def test_coarse_cells_are_standardised_per_modality_with_a_floored_std() -> None:
    model = UnifiedModel(TINY)
    torch.manual_seed(0)
    images = torch.rand(64, 1, 128, 128)
    images[..., :8, :8] = 0.0  # the first pooled cell is constant, like air around a CT body
    model.fit_coarse_stats(1, images)
    cells = (model.coarse_pooled(images) - model.coarse_mean[1]) / model.coarse_std[1]
    assert cells[:, 1:].mean(0).abs().max() < 1e-4
    assert torch.allclose(cells[:, 1:].std(0), torch.ones(cells.shape[1] - 1), atol=1e-3)
    assert model.coarse_std[1, 0] == COARSE_STD_FLOOR and cells[:, 0].abs().max() == 0
    # the other modalities keep the identity until they are fitted
    assert model.coarse_mean[[0, 2]].abs().max() == 0 and (model.coarse_std[[0, 2]] == 1).all()


def test_cell_map_is_clipped_and_brought_to_the_token_grid() -> None:
    model = UnifiedModel(TINY)
    cells = torch.zeros(2, TINY.coarse * TINY.coarse)
    cells[0, 0] = 100.0  # an air cell whose floored std blew it up
    radiograph = model.cell_map(cells, 16, 16)  # 128 px / stride 8: one cell per token
    assert radiograph.shape == (2, 1, 16, 16) and radiograph[0, 0, 0, 0] == CELL_CLIP
    volume_slice = model.cell_map(cells, 8, 8)  # 64 px slices: 2 x 2 cells per token
    assert volume_slice.shape == (2, 1, 8, 8) and volume_slice[0, 0, 0, 0] == CELL_CLIP / 4
    assert volume_slice[1].abs().max() == 0
    finer = model.cell_map(cells, 32, 32)  # a grid finer than the cells repeats them
    assert finer.shape == (2, 1, 32, 32) and (finer[0, 0, :2, :2] == CELL_CLIP).all() and finer[0, 0, 2:].max() == 0


def test_segmentation_reads_the_cell_map_locally_and_can_be_off() -> None:
    assert UnifiedModel(replace(TINY, coarse_seg=0)).heads.cell_conv is None
    torch.manual_seed(0)
    model = UnifiedModel(TINY).eval()
    image = torch.rand(1, 1, 128, 128)
    modality = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        base = model.forward_2d(image, modality)["seg"]
        model.coarse_mean[0, 2 * TINY.coarse + 2] -= 1.0  # cell (row 2, col 2) now reads brighter, pixels unchanged
        moved = model.forward_2d(image, modality)["seg"]
    diff = (moved - base).abs()[0].amax(0)
    # under the cell, and far more than far away (where only the decoder's GroupNorm statistics moved)
    assert diff[16:24, 16:24].mean() > 10 * diff[64:, 64:].mean() > 0


def test_forward_and_decoding_create_no_tensor_off_the_model_device() -> None:
    # a GPU worker (or a bench on CUDA) fails on a tensor made on the CPU behind the inputs' back; the "meta" device
    # catches the same mistake here: mixing it with a CPU tensor of one or more dimensions raises
    model = UnifiedModel(replace(TINY, image_size=32, slice_size=32, depth=4, top_k=2)).to("meta").eval()
    cfg = model.cfg
    with torch.no_grad():
        o2 = model.forward_2d(torch.zeros(2, 1, 32, 32, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
        o3 = model.forward_3d(torch.zeros(1, 4, 32, 32, device="meta"), torch.ones(1, dtype=torch.long, device="meta"))
        ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
        logits = model.text_logits(ids, o2["memory"])
    assert o2["logits"].device.type == o3["logits"].device.type == logits.device.type == "meta"
    assert logits.shape == (2, 5, cfg.vocab_size)
    assert all(t.device.type == "meta" for t in model.empty_past(3))


def test_copy_head_puts_probability_only_on_tokens_already_in_the_sequence() -> None:
    """With the gate all on copying, each position's next-token distribution lies on the tokens seen so far;
    and decoding step by step with the cache (``past_ids``) gives the full pass's distributions."""
    torch.manual_seed(0)
    model = UnifiedModel(replace(TINY, copy=1)).eval()
    assert model.decoder.copy_gate is not None
    nn.init.constant_(model.decoder.copy_gate.bias, -30.0)
    memory = torch.randn(1, 5, TINY.d)
    ids = torch.tensor([[5, 9, 9, 17, 3]])
    with torch.no_grad():
        logp = model.text_logits(ids, memory)[0]
    for t in range(ids.shape[1]):
        assert logp[t].exp()[sorted(set(ids[0, : t + 1].tolist()))].sum() > 0.999
    ck, cv = model.decoder.cross_kv(memory)
    pk, pv = model.empty_past(1)
    with torch.no_grad():
        first, pk, pv = model.decoder(ids[:, :3], ck, cv, pk, pv)
        last, _, _ = model.decoder(ids[:, 3:], ck, cv, pk, pv, ids[:, :3])
    torch.testing.assert_close(torch.cat([first, last], 1)[0], logp, atol=1e-5, rtol=1e-5)


def test_copy_head_decodes_on_the_model_device() -> None:
    model = UnifiedModel(replace(TINY, copy=1, image_size=32, slice_size=32, depth=4, top_k=2)).to("meta").eval()
    with torch.no_grad():
        o2 = model.forward_2d(torch.zeros(2, 1, 32, 32, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
        logits = model.text_logits(torch.zeros(2, 5, dtype=torch.long, device="meta"), o2["memory"])
    assert logits.device.type == "meta" and logits.shape == (2, 5, model.cfg.vocab_size)


@pytest.mark.parametrize("copy", [0, 1])
def test_text_loss_is_the_full_pass_cross_entropy_with_the_same_gradients(copy: int) -> None:
    """Training computes outputs only where a target is (``text_loss``); the loss and every gradient must be
    those of the full teacher-forced pass (``text_logits``) that the exported decoder step reproduces."""
    torch.manual_seed(0)
    model = UnifiedModel(replace(TINY, copy=copy)).train()
    memory = torch.randn(3, 5, TINY.d)
    ids = torch.randint(0, TINY.vocab_size, (3, 9))
    targets = torch.full((3, 9), -100)
    targets[0, 4:8] = ids[0, 5:9]  # answers after prompts of different lengths; row 2 padded after its answer
    targets[1, 2:8] = ids[1, 3:9]
    targets[2, 6:7] = ids[2, 7:8]

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = nn.functional.cross_entropy(model.text_logits(ids, memory).flatten(0, 1), targets.flatten())
    expected = grads(full)
    sparse = model.text_loss(ids, targets, memory)
    got = grads(sparse)
    torch.testing.assert_close(sparse, full, atol=1e-6, rtol=1e-5)
    assert got.keys() == expected.keys() and len(got) > 10
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-4, msg=name)
    with torch.no_grad():
        at = targets != -100
        rows = model.decoder.teacher_forced(ids, *model.decoder.cross_kv_layers(memory), at)
        torch.testing.assert_close(rows, model.text_logits(ids, memory)[at], atol=1e-5, rtol=1e-5)
