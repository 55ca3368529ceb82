"""Tests of the Organ-DETR network: shapes, gradients, deformable sampling, MSA wiring, input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from organdetr.backbone import conv_norm_act
from organdetr.config import (
    BackboneConfig,
    DecoderConfig,
    ModelConfig,
    MSAConfig,
    SegmentationBranchConfig,
    preset_config,
)
from organdetr.deformable_attention import MultiScaleDeformableAttention3D, multi_scale_deformable_sampling
from organdetr.msa import MultiScaleAttentionEncoder
from organdetr.organ_detr import OrganDETR, build_model
from organdetr.position_encoding import sine_position_encoding_3d
from organdetr.segmentation_branch import SegmentationBranch, fine_regions


def _small() -> ModelConfig:
    return preset_config("small").model


def _random_loss(outputs: dict, generator: torch.Generator) -> torch.Tensor:
    """A loss touching every output with random weights (a plain sum can cancel through LayerNorm/softmax)."""
    tensors = [outputs["pred_logits"], outputs["pred_boxes"]]
    for layer in [outputs, *outputs["aux_outputs"]]:
        tensors += [layer["pred_logits"], layer["pred_boxes"]] + (
            [layer["pred_quality"]] if "pred_quality" in layer else []
        )
    tensors += outputs.get("seg_logits", [])
    tensors += [outputs[key] for key in ("seg_full_logits", "pred_presence") if key in outputs]
    tensors += [fine.logits for fine in outputs.get("seg_fine_logits", []) if fine is not None]
    return sum((t * torch.randn(t.shape, generator=generator)).sum() for t in tensors)


def _check_outputs(outputs: dict, config: ModelConfig, batch: int, level_shapes: list[tuple[int, int, int]]) -> None:
    queries, classes = config.decoder.num_queries, config.num_classes
    assert outputs["pred_logits"].shape == (batch, queries, classes + 1)
    assert outputs["pred_boxes"].shape == (batch, queries, 6)
    assert len(outputs["aux_outputs"]) == config.decoder.num_layers - 1
    for aux in outputs["aux_outputs"]:
        assert aux["pred_logits"].shape == outputs["pred_logits"].shape
        assert aux["pred_boxes"].shape == outputs["pred_boxes"].shape
    boxes = torch.cat([outputs["pred_boxes"]] + [aux["pred_boxes"] for aux in outputs["aux_outputs"]])
    assert torch.isfinite(boxes).all() and (boxes > 0).all() and (boxes < 1).all()
    assert [tuple(s.shape) for s in outputs["seg_logits"]] == [(batch, classes + 1, *shape) for shape in level_shapes]


def test_small_preset_shapes_and_segmentation_switch():
    torch.manual_seed(0)
    config = _small()
    model = build_model(config)
    images = torch.randn(2, 1, 64, 64, 32)
    model.train()
    _check_outputs(model(images), config, 2, [(16, 16, 8), (8, 8, 4), (4, 4, 2)])
    model.eval()
    with torch.no_grad():
        assert "seg_logits" not in model(images)
        outputs = model(images, return_segmentation=True)
    _check_outputs(outputs, config, 2, [(16, 16, 8), (8, 8, 4), (4, 4, 2)])


def test_paper_preset_shapes_at_small_input():
    torch.manual_seed(0)
    config = preset_config("paper").model
    assert config.decoder.d_model == 384 and config.msa.num_heads == 64 and config.decoder.num_queries == 100
    model = build_model(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 64, 32, 32), return_segmentation=True)
    _check_outputs(outputs, config, 1, [(16, 8, 8), (8, 4, 4), (4, 2, 2)])


@pytest.mark.parametrize(
    "variant",
    ["small", "no_msa", "no_refine_with_encoder", "segmentation_branch_quality_presence"],
)
def test_every_parameter_gets_a_gradient(variant):
    torch.manual_seed(0)
    config = _small()
    if variant == "no_msa":
        config = dataclasses.replace(config, msa=dataclasses.replace(config.msa, enabled=False))
    elif variant == "no_refine_with_encoder":
        config = dataclasses.replace(
            config, decoder=dataclasses.replace(config.decoder, box_refine=False, num_encoder_layers=1)
        )
    elif variant == "segmentation_branch_quality_presence":
        branch = SegmentationBranchConfig(enabled=True, output_stride=1)
        config = dataclasses.replace(
            config,
            segmentation_branch=branch,
            quality_head=True,
            presence_head=True,
            presence_levels=len(config.backbone.out_stages),  # every level feeds the presence head
        )
    model = build_model(config).train()
    images = torch.randn(2, 1, 32, 32, 32)
    _random_loss(model(images), torch.Generator().manual_seed(1)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    # DETR-style zero-initialised layers (box head output, attention weights) block gradients to the layers before
    # them at step 0 only; give them small random values so that this checks the wiring, not the initialisation.
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.01)
    model.zero_grad(set_to_none=True)
    _random_loss(model(images), torch.Generator().manual_seed(1)).backward()
    zero = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not zero, f"no or all-zero gradient for {zero}"


@pytest.mark.parametrize(
    "trained", ["decoder", "presence_head", "seg_branch", "seg_heads", "backbone", "msa", "decoder.quality_head"]
)
def test_branch_trains_says_whether_the_branch_outputs_reach_a_trainable_weight(trained):
    """What ``branch_trains`` claims (and the trainer relies on to leave the branch out) is what autograd finds: a
    loss on the branch's outputs alone gives a gradient to some trainable weight exactly when it says so; without
    the branch the other outputs are the same."""
    torch.manual_seed(0)
    branch = SegmentationBranchConfig(enabled=True, output_stride=1)
    config = dataclasses.replace(_small(), segmentation_branch=branch, quality_head=True, presence_head=True)
    model = build_model(config).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(trained))
    images = torch.randn(1, 1, 32, 32, 32)
    outputs = model(images)
    branch_outputs = [outputs["seg_full_logits"]] + [
        fine.logits for fine in outputs["seg_fine_logits"] if fine is not None
    ]
    reaches = any(tensor.requires_grad for tensor in branch_outputs)
    assert model.branch_trains() == reaches == (trained in ("seg_branch", "backbone"))
    model.eval()  # no dropout: the two calls must agree
    with torch.no_grad():
        whole, without = model(images, return_segmentation=True), model(images, return_segmentation=True, branch=False)
    assert "seg_full_logits" not in without and "seg_fine_logits" not in without
    assert set(without) == set(whole) - {"seg_full_logits", "seg_fine_logits"}
    assert torch.equal(without["pred_boxes"], whole["pred_boxes"])
    assert all(torch.equal(a, b) for a, b in zip(without["seg_logits"], whole["seg_logits"], strict=True))


def test_no_msa_baseline_feeds_fpn_levels_to_decoder():
    config = dataclasses.replace(_small(), msa=MSAConfig(enabled=False))
    model = build_model(config).train()
    assert model.msa is None and model.input_proj is not None
    outputs = model(torch.randn(1, 1, 64, 64, 64))
    _check_outputs(outputs, config, 1, [(16, 16, 16), (8, 8, 8), (4, 4, 4)])


def test_resnet_backbone_shapes():
    config = dataclasses.replace(
        _small(), backbone=BackboneConfig(kind="resnet", resnet_depth=10, fpn_channels=32, out_stages=(1, 2, 3))
    )
    model = build_model(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 64, 64, 32), return_segmentation=True)
    _check_outputs(outputs, config, 1, [(16, 16, 8), (8, 8, 4), (4, 4, 2)])


@pytest.mark.parametrize(
    ("norm", "monai_norm"),
    [("instance", ("instance", {"affine": True})), ("group", ("group", {"num_groups": 8})), ("batch", ("batch", {}))],
)
def test_conv_norm_act_is_monais_convolution_block(norm, monai_norm):
    """The fpn backbone's units, built without MONAI, have the layers, names and outputs of the MONAI block they
    replace, so checkpoints saved with it load and compute as before."""
    from monai.networks.blocks import Convolution

    torch.manual_seed(0)
    ours = conv_norm_act(8, 16, 2, norm)
    theirs = Convolution(
        3, 8, 16, strides=2, kernel_size=3, norm=monai_norm, act=("leakyrelu", {"negative_slope": 0.01})
    )

    def layers(block: torch.nn.Module) -> list[tuple[str, str]]:  # the containers differ: Sequential, ADN
        return [(name, repr(module)) for name, module in block.named_modules() if not list(module.children())]

    assert layers(ours) == layers(theirs)
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 8, 12, 10, 8)
    for mode in (True, False):
        assert torch.equal(ours.train(mode)(images), theirs.train(mode)(images))
    assert all(torch.equal(ours.state_dict()[name], tensor) for name, tensor in theirs.state_dict().items())


@pytest.mark.parametrize("shape", [(1, 1, 48, 64, 64), (1, 1, 64, 64, 40), (1, 64, 64, 64)])
def test_bad_input_size_raises_value_error(shape):
    model = build_model(_small()).eval()
    with pytest.raises(ValueError, match=r"input|expected"):
        model(torch.randn(*shape))


def test_size_divisor_matches_pyramid_and_patching():
    assert OrganDETR(_small()).size_divisor == 32  # stride 16 of the coarsest level x patch 2
    no_msa = dataclasses.replace(_small(), msa=MSAConfig(enabled=False))
    assert OrganDETR(no_msa).size_divisor == 16  # only the four encoder halvings


def _naive_trilinear(volume: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
    """Sample ``volume`` [C, d0, d1, d2] at normalised ``location`` (u0, u1, u2), voxel-edge convention, zeros out."""
    sizes = volume.shape[1:]
    # Voxel v's centre is at u = (v + 0.5) / n, so the continuous index is u * n - 0.5.
    index = [float(location[axis]) * sizes[axis] - 0.5 for axis in range(3)]
    base = [int(torch.floor(torch.tensor(i))) for i in index]
    result = torch.zeros(volume.shape[0], dtype=volume.dtype)
    for corner in range(8):
        offsets = [(corner >> axis) & 1 for axis in range(3)]
        voxel = [base[axis] + offsets[axis] for axis in range(3)]
        weight = 1.0
        for axis in range(3):
            frac = index[axis] - base[axis]
            weight *= frac if offsets[axis] else 1.0 - frac
        if all(0 <= voxel[axis] < sizes[axis] for axis in range(3)):
            result += weight * volume[:, voxel[0], voxel[1], voxel[2]]
    return result


def test_deformable_sampling_matches_naive_trilinear_reference():
    generator = torch.Generator().manual_seed(0)
    batch, heads, head_dim, queries, points = 2, 3, 4, 5, 2
    shapes = [(6, 5, 4), (3, 2, 5)]
    total = sum(a * b * c for a, b, c in shapes)
    value = torch.randn(batch, total, heads, head_dim, generator=generator, dtype=torch.float64)
    # Range beyond [0, 1] exercises the zero padding outside the volume.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 3, generator=generator, dtype=torch.float64)
    locations = locations * 1.3 - 0.15
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator, dtype=torch.float64)
    weights = weights / weights.sum(dim=(-2, -1), keepdim=True)

    output = multi_scale_deformable_sampling(value, shapes, locations, weights)

    expected = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    level_values = value.split([a * b * c for a, b, c in shapes], dim=1)
    for b in range(batch):
        for h in range(heads):
            volumes = [v[b, :, h].T.reshape(head_dim, *shape) for v, shape in zip(level_values, shapes, strict=True)]
            for q in range(queries):
                for level, volume in enumerate(volumes):
                    for p in range(points):
                        sample = _naive_trilinear(volume, locations[b, q, h, level, p])
                        expected[b, q, h] += weights[b, q, h, level, p] * sample
    torch.testing.assert_close(output, expected.reshape(batch, queries, heads * head_dim))


def test_deformable_sampling_at_voxel_centre_reads_that_voxel():
    """Axis order: a location (u0, u1, u2) at a voxel centre must return exactly value[i0, i1, i2]."""
    shape = (4, 6, 8)
    volume = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(shape)
    value = volume.reshape(1, -1, 1, 1)
    voxel = (1, 4, 6)
    location = torch.tensor([(v + 0.5) / n for v, n in zip(voxel, shape, strict=True)])
    output = multi_scale_deformable_sampling(value, [shape], location.view(1, 1, 1, 1, 1, 3), torch.ones(1, 1, 1, 1, 1))
    assert output.item() == pytest.approx(volume[voxel].item())


def test_deformable_attention_box_references_and_initial_spread():
    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention3D(d_model=16, num_heads=4, num_levels=2, num_points=3)
    offsets = attention.sampling_offsets.bias.view(4, 2, 3, 3)
    # Heads look in different directions, points step outwards along them.
    assert torch.unique(offsets[:, 0, 0], dim=0).shape[0] == 4
    torch.testing.assert_close(offsets[:, :, 2], 3 * offsets[:, :, 0])
    shapes = [(4, 4, 4), (2, 2, 2)]
    value = torch.randn(2, 64 + 8, 16)
    query = torch.randn(2, 5, 16)
    for reference in (torch.rand(2, 5, 2, 3), torch.rand(2, 5, 2, 6)):
        assert attention(query, reference, value, shapes).shape == (2, 5, 16)


def _msa_outputs(encoder: MultiScaleAttentionEncoder, features: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return encoder([f.clone() for f in features])


def test_msa_cross_attention_flows_from_coarse_to_fine_only():
    torch.manual_seed(0)
    config = MSAConfig(patch_size=2, embed_dim=16, num_heads=2, depth=2, ffn_dim=32, dropout=0.0)
    encoder = MultiScaleAttentionEncoder(in_channels=8, out_channels=12, num_levels=3, config=config).eval()
    features = [torch.randn(1, 8, n, n, n) for n in (8, 4, 2)]
    reference = _msa_outputs(encoder, features)
    assert [tuple(o.shape) for o in reference] == [(1, 12, n, n, n) for n in (8, 4, 2)]

    coarse_changed = [f.clone() for f in features]
    coarse_changed[2] += torch.randn_like(coarse_changed[2])
    outputs = _msa_outputs(encoder, coarse_changed)
    assert not torch.allclose(outputs[0], reference[0]), "finest level ignores the coarsest"
    assert not torch.allclose(outputs[1], reference[1]), "middle level ignores the coarsest"

    fine_changed = [f.clone() for f in features]
    fine_changed[0] += torch.randn_like(fine_changed[0])
    outputs = _msa_outputs(encoder, fine_changed)
    torch.testing.assert_close(outputs[2], reference[2], rtol=0, atol=0)
    torch.testing.assert_close(outputs[1], reference[1], rtol=0, atol=0)
    assert not torch.allclose(outputs[0], reference[0])


def test_msa_rejects_levels_not_divisible_by_patch():
    encoder = MultiScaleAttentionEncoder(4, 8, 1, MSAConfig(embed_dim=8, num_heads=2))
    with pytest.raises(ValueError, match="patch size"):
        encoder([torch.randn(1, 4, 5, 4, 4)])


def test_sine_position_encoding_shape_and_distinct_positions():
    encoding = sine_position_encoding_3d((4, 3, 2), 32)
    assert encoding.shape == (24, 32)
    distances = torch.cdist(encoding, encoding)
    assert (distances + torch.eye(24) > 1e-3).all(), "two voxels share a code"
    # Normalised coordinates: the coarse voxel and the fine voxels it covers get nearby codes.
    fine = sine_position_encoding_3d((8, 8, 8), 32, max_periods=1.0).view(8, 8, 8, 32)
    coarse = sine_position_encoding_3d((4, 4, 4), 32, max_periods=1.0).view(4, 4, 4, 32)
    assert (fine[0, 0, 0] - coarse[0, 0, 0]).norm() < (fine[7, 7, 7] - coarse[0, 0, 0]).norm()


def test_decoder_initialisation_is_detr_like():
    config = _small()
    model = build_model(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 32, 32, 32))
    probs = outputs["aux_outputs"][0]["pred_logits"].softmax(-1)
    assert (probs[..., -1] > probs[..., :-1].sum(-1)).all(), "fresh queries should mostly predict no-object"
    sizes = outputs["aux_outputs"][0]["pred_boxes"][..., 3:]
    torch.testing.assert_close(sizes, torch.full_like(sizes, 0.12), atol=1e-4, rtol=0)


def test_decoder_config_without_refinement_shares_box_head():
    config = dataclasses.replace(_small(), decoder=DecoderConfig(box_refine=False, num_layers=2))
    model = build_model(config)
    assert len(model.decoder.box_heads) == 1


@pytest.mark.parametrize("output_stride", [1, 2])
def test_segmentation_branch_and_quality_head_shapes(output_stride):
    torch.manual_seed(0)
    branch = SegmentationBranchConfig(enabled=True, output_stride=output_stride)
    config = dataclasses.replace(_small(), segmentation_branch=branch, quality_head=True)
    model = build_model(config).eval()
    images = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        outputs = model(images, return_segmentation=True)
        plain = model(images)
    assert outputs["seg_full_logits"].shape == (1, config.num_classes + 1, 32, 16, 16)  # stride 2
    if output_stride == 1:
        (fine,) = outputs["seg_fine_logits"]  # random weights: some organ everywhere, the region is the whole grid
        assert fine.region == (slice(0, 64), slice(0, 32), slice(0, 32))
        assert fine.logits.shape == (config.num_classes + 1, 64, 32, 32)
    else:
        assert "seg_fine_logits" not in outputs
    assert outputs["pred_quality"].shape == (1, config.decoder.num_queries)
    assert all(aux["pred_quality"].shape == (1, config.decoder.num_queries) for aux in outputs["aux_outputs"])
    assert "seg_full_logits" not in plain and "pred_quality" in plain


def test_fine_regions_cover_the_organ_cells_plus_the_margin() -> None:
    logits = torch.zeros(2, 3, 8, 8, 8)
    logits[:, 0] = 10.0  # background everywhere
    logits[0, 2, 3:5, 0:2, 6] = 20.0  # organ 2 in sample 0 only
    regions = fine_regions(logits.softmax(dim=1), threshold=0.5, margin=1)
    assert regions == [(slice(2, 6), slice(0, 3), slice(5, 8)), None]  # grown by 1, clipped at the edges


def test_fine_stage_in_its_region_equals_the_whole_grid() -> None:
    """The region is only a saving: inside it the logits are those of the fine stage run on the whole grid."""
    torch.manual_seed(0)
    config = SegmentationBranchConfig(enabled=True, output_stride=1, fine_region_threshold=0.93, fine_region_margin=1)
    branch = SegmentationBranch(4, 3, 1, 2, config).eval()
    torch.nn.init.normal_(branch.fine_classifier.weight)  # zero-initialised: would hide the stage
    finest, stride2, images = torch.randn(2, 4, 8, 8, 8), torch.randn(2, 3, 16, 16, 16), torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        fine = branch(finest, stride2, images)["seg_fine_logits"]
        half = branch.to_half(torch.cat([F.interpolate(finest, size=(16,) * 3, mode="trilinear"), stride2], dim=1))
        coarse = branch.classifier(half)
        upsampled = F.interpolate(coarse, size=(32,) * 3, mode="trilinear")
        features = torch.cat([F.interpolate(half, scale_factor=2, mode="trilinear"), images], dim=1)
        whole = upsampled + branch.fine_classifier(branch.fine_units(features))
    for b, (item, region) in enumerate(zip(fine, fine_regions(coarse.softmax(dim=1), 0.93, 1), strict=True)):
        assert item.region == tuple(slice(2 * r.start, 2 * r.stop) for r in region)
        inside = torch.zeros(32, 32, 32, dtype=torch.bool)
        inside[item.region] = True
        assert 0 < inside.sum() < inside.numel() / 2  # a real part of the grid
        torch.testing.assert_close(item.logits, whole[(b, slice(None), *item.region)], atol=1e-5, rtol=1e-5)
