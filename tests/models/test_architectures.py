"""The three architectures: shapes on odd sizes, gradients, parameter counts, attention maps."""

from __future__ import annotations

import pytest
import torch

from retinaseg.core.config import MODEL_NAMES, load_params
from retinaseg.models.attention_unet import AttentionUNet
from retinaseg.models.factory import build_model, count_parameters
from retinaseg.models.unet import UNet, crop_pads, pad_to_multiple

TINY = {
    "unet": {"base_channels": 4, "depth": 3, "norm": "batch", "dropout": 0.1},
    "attention_unet": {"base_channels": 4, "depth": 3, "norm": "batch", "dropout": 0.0},
    "resnet34_unet": {"encoder_weights": None},
}


def test_factory_covers_every_configured_model():
    assert set(TINY) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 3, 37, 45), (2, 3, 64, 48)])
def test_forward_backward_any_size(name, shape):
    torch.manual_seed(0)
    model = build_model(name, TINY[name]).train()
    x = torch.randn(*shape)
    logits = model(x)
    assert logits.shape == (shape[0], 1, shape[2], shape[3])
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_same_seed_same_model_and_output(name):
    x = torch.randn(1, 3, 20, 20)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(build_model(name, TINY[name]).eval()(x))
    assert torch.equal(outs[0], outs[1])


def test_output_aligned_with_input_after_padding():
    # padding then cropping must not shift the output: the response to a bright spot peaks at the spot
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2, norm="none").eval()
    x = torch.zeros(1, 3, 21, 19)
    x[..., 10, 9] = 50.0
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).abs()[0, 0]
    row, col = divmod(int(diff.argmax()), diff.shape[1])
    assert abs(row - 10) <= 2 and abs(col - 9) <= 2


def test_pad_and_crop_round_trip():
    x = torch.arange(1 * 2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded, pads = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (8, 8)
    assert pads == (0, 1, 1, 2)
    assert torch.equal(crop_pads(padded, pads), x)
    tiny, tiny_pads = pad_to_multiple(torch.ones(1, 1, 2, 3), 16)  # too small to reflect
    assert tiny.shape[-2:] == (16, 16) and torch.equal(crop_pads(tiny, tiny_pads), torch.ones(1, 1, 2, 3))


def test_paper_unet_has_31m_parameters():
    counts = {
        "unet-64 (BN)": count_parameters(UNet(base_channels=64, depth=4)),
        "unet-64 (no BN, the paper)": count_parameters(UNet(base_channels=64, depth=4, norm="none")),
        "unet-16": count_parameters(UNet(base_channels=16, depth=4)),
        "attention_unet-16": count_parameters(AttentionUNet(base_channels=16, depth=4)),
        "resnet34_unet": count_parameters(build_model("resnet34_unet", {"encoder_weights": None})),
    }
    print(counts)
    # Ronneberger et al.'s network: 31.03 M weights (64..1024 channels, 23 convolutions)
    assert counts["unet-64 (no BN, the paper)"] == 31_031_745
    assert 30.9e6 < counts["unet-64 (BN)"] < 31.1e6
    assert 24.3e6 < counts["resnet34_unet"] < 24.5e6  # smp's ResNet34-UNet, 1 class
    assert counts["attention_unet-16"] > counts["unet-16"]  # the gates add parameters


def test_configured_models_build_from_params_yaml(repo_root):
    params = load_params(repo_root / "params.yaml")
    for name in ("unet", "attention_unet"):
        model = build_model(name, params.model_params(name))
        assert count_parameters(model) > 0


def test_attention_maps_shape_and_range():
    torch.manual_seed(0)
    model = AttentionUNet(base_channels=4, depth=3).eval()
    x = torch.randn(2, 3, 37, 45)
    logits, maps = model(x, return_attention=True)
    assert logits.shape == (2, 1, 37, 45)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 37, 45), (2, 1, 19, 23), (2, 1, 10, 12)]
    assert model.attention_maps is maps
    for m in maps:
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert not m.requires_grad
    # the plain call returns logits only and still refreshes the maps
    assert torch.equal(model(x), logits)
    assert len(model.attention_maps) == 3


def test_attention_gate_changes_the_skip():
    torch.manual_seed(0)
    model = AttentionUNet(base_channels=4, depth=2).eval()
    gate = model.ups[-1].gate
    skip, coarse = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)
    gated, alpha = gate(skip, coarse)
    assert alpha.shape == (1, 1, 8, 8)
    assert torch.allclose(gated, skip * alpha)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown model 'vnet'.*unet, attention_unet, resnet34_unet"):
        build_model("vnet", {})
    with pytest.raises(ValueError, match="invalid params for model 'unet'"):
        build_model("unet", {"base_channel": 4})
    with pytest.raises(ValueError, match="invalid params for model 'resnet34_unet'"):
        build_model("resnet34_unet", {"encoder_weights": None, "depth": 3})
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)


# ------------------------------------------------------------------------------------- models.<name>.norm


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
@pytest.mark.parametrize("norm", ["instance", "none"])
def test_forward_backward_with_each_norm(name, norm):
    torch.manual_seed(0)
    model = build_model(name, {**TINY[name], "norm": norm}).train()
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.BatchNorm2d not in kinds
    assert (torch.nn.InstanceNorm2d in kinds) == (norm == "instance")
    convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d and m.kernel_size == (3, 3)]
    assert convs and all((c.bias is not None) == (norm == "none") for c in convs)  # a norm's shift replaces the bias
    logits = model(torch.randn(2, 3, 37, 45))
    assert logits.shape == (2, 1, 37, 45) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}/{norm}: {pname}"
        if norm == "instance":  # (without a norm, a tiny random gate can start with its ReLU all off)
            assert param.grad.abs().sum() > 0, f"{name}/{norm}: zero gradient for {pname}"


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with running statistics and affine parameters away from their initial values."""
    generator = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.InstanceNorm2d) and m.affine:
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=generator)
            m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.2
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = torch.randn(m.running_mean.shape, generator=generator) * 0.1
            m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=generator)
    return model.eval()


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_instance_norm_normalises_the_contrast_away(name):
    # norm: instance normalises each image with its own statistics: the network's input (standardised
    # pixels) with twice or half the contrast gives the same map, to InstanceNorm's eps. Batch norm
    # uses the statistics of the training crops, whatever the image: its map changes.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        instance = _trained_like(build_model(name, {**TINY[name], "norm": "instance"}))
        batch = _trained_like(build_model(name, {**TINY[name], "norm": "batch"}))
        for gain in (2.0, 0.5):
            assert (instance(gain * x) - instance(x)).abs().max() < 5e-4, gain
            assert (batch(gain * x) - batch(x)).abs().max() > 5e-3, gain


def test_instance_norm_sees_each_image_alone():
    # per-image statistics: an image's map does not depend on the other images of its batch, in
    # training mode too (batch norm's training-mode output does)
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    for mode in ("train", "eval"):
        model = build_model("unet", {**TINY["unet"], "norm": "instance", "dropout": 0.0})
        model.train(mode == "train")
        with torch.no_grad():
            assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5), mode
    batch = build_model("unet", {**TINY["unet"], "dropout": 0.0}).train()
    with torch.no_grad():
        assert not torch.allclose(batch(x)[:1], batch(x[:1]), atol=1e-3)


def test_norm_choices_are_checked():
    with pytest.raises(ValueError, match="norm must be one of batch, instance, none; got 'layer'"):
        UNet(base_channels=4, depth=2, norm="layer")
    with pytest.raises(ValueError, match="norm must be one of"):
        build_model("attention_unet", {**TINY["attention_unet"], "norm": "group"})


def test_model_cards_written_with_batch_norm_still_build():
    # cards written before `norm` replaced `batch_norm` carry batch_norm: true | false
    old = {"base_channels": 4, "depth": 2, "dropout": 0.0}
    for legacy, norm in ((True, "batch"), (False, "none")):
        torch.manual_seed(0)
        built = build_model("unet", {**old, "batch_norm": legacy})
        torch.manual_seed(0)
        expected = build_model("unet", {**old, "norm": norm})
        assert built.state_dict().keys() == expected.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), expected.state_dict().values()))
    with pytest.raises(ValueError, match="give norm or the older batch_norm, not both"):
        build_model("unet", {**old, "batch_norm": True, "norm": "batch"})
    with pytest.raises(ValueError, match="batch_norm must be true or false, got 'yes'"):
        build_model("unet", {**old, "batch_norm": "yes"})
