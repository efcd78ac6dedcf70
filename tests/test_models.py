from __future__ import annotations

import math
from urllib.error import URLError

import pytest
import torch
from huggingface_hub import constants as hub_constants
from torch import nn
from torchvision.models import WeightsEnum

from bestie.errors import BestieError
from bestie.models import (
    BACKBONES,
    BestieNet,
    HRNetBackbone,
    PAMClassifier,
    PeakAttention,
    ResNetBackbone,
    SmallBackbone,
    VGG16Backbone,
    build_backbone,
    multilabel_loss,
    peak_attention,
)
from bestie.models.panoptic_deeplab import ASPP


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead, and thrash when other jobs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """Every torchvision weight download fails as it does without a network."""

    def no_network(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_network)


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """The Hugging Face hub (timm's weights) offline, over an empty cache."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))


def _check_features(backbone, features, height, width):
    assert set(features) == set(backbone.out_channels) == set(backbone.strides)
    assert backbone.deepest in features and set(backbone.low_level) <= set(features)
    for name, fmap in features.items():
        stride = backbone.strides[name]
        assert fmap.shape == (2, backbone.out_channels[name], math.ceil(height / stride),
                              math.ceil(width / stride)), name


# ------------------------------------------------------------------ backbones


def test_small_backbone_features_and_strides():
    backbone = SmallBackbone(width=32)
    assert backbone.strides == {"res2": 4, "res3": 8, "res4": 8, "res5": 8}
    assert backbone.deepest == "res5" and backbone.low_level == ("res3", "res2")
    _check_features(backbone, backbone(torch.randn(2, 3, 64, 64)), 64, 64)
    _check_features(backbone, backbone(torch.randn(2, 3, 96, 80)), 96, 80)


def test_small_backbone_parameter_count_in_intended_range():
    count = sum(p.numel() for p in SmallBackbone().parameters())
    assert 300_000 <= count <= 1_500_000


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet50_backbone_from_scratch(output_stride):
    backbone = ResNetBackbone(50, pretrained=False, output_stride=output_stride)
    assert backbone.strides == {"res2": 4, "res3": 8, "res4": min(16, output_stride),
                                "res5": output_stride}
    assert backbone.out_channels["res5"] == 2048
    with torch.no_grad():
        _check_features(backbone, backbone(torch.randn(2, 3, 64, 64)), 64, 64)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_vgg16_backbone_dilated_conv5(output_stride):
    backbone = VGG16Backbone(output_stride=output_stride)
    assert backbone.strides == {"conv3": 4, "conv4": 8, "conv5": output_stride}
    conv5 = [m for m in backbone.conv5 if isinstance(m, nn.Conv2d)]
    assert len(conv5) == 3 and all(m.dilation == (2, 2) for m in conv5)
    assert not isinstance(list(backbone.conv5)[-1], nn.MaxPool2d)  # pool5 dropped
    # Module indices match torchvision's vgg16().features, so its weights load unchanged.
    keys = {f"{i + 23}.{k}" for i, m in enumerate(backbone.conv5) for k in m.state_dict()}
    assert keys == {f"{i}.{p}" for i in (24, 26, 28) for p in ("weight", "bias")}
    with torch.no_grad():
        _check_features(backbone, backbone(torch.randn(2, 3, 64, 64)), 64, 64)


@pytest.mark.parametrize("name, kind, deepest_stride", [
    ("small", SmallBackbone, 8), ("resnet50", ResNetBackbone, 16), ("resnet101", ResNetBackbone, 16),
    ("vgg16", VGG16Backbone, 8), ("hrnet_w32", HRNetBackbone, 32), ("hrnet_w48", HRNetBackbone, 32),
])
def test_registry_builds_each_backbone_by_name(name, kind, deepest_stride):
    backbone = build_backbone(name)
    assert type(backbone) is kind and backbone.strides[backbone.deepest] == deepest_stride
    assert backbone.compact == (name == "small")  # only the small one gets compact decoders
    assert set(BACKBONES) == {"small", "resnet50", "resnet101", "vgg16", "hrnet_w32", "hrnet_w48"}


@pytest.mark.parametrize("name, width", [("hrnet_w32", 32), ("hrnet_w48", 48)])
def test_hrnet_backbone_branches_from_timm(name, width):
    backbone = build_backbone(name)
    assert backbone.out_channels == {"res2": width, "res3": 2 * width, "res4": 4 * width, "res5": 8 * width}
    assert backbone.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert backbone.low_level == ("res4", "res3", "res2")  # every branch feeds the decoder


@pytest.mark.parametrize("height, width", [(64, 96), (97, 130)])
def test_hrnet_backbone_takes_any_size(height, width):
    """HRNet itself needs sides divisible by 32; the backbone pads and cuts back."""
    backbone = build_backbone("hrnet_w32").eval()
    with torch.no_grad():
        _check_features(backbone, backbone(torch.randn(2, 3, height, width)), height, width)


def test_registered_backbones_carry_either_model():
    """Params accept every registered name for the classifier and the network alike; these
    two pairings were not offered before (the others run elsewhere in this file)."""
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        cams = PAMClassifier(2, build_backbone("resnet50")).eval()(images)["cams"]
        out = BestieNet(2, "vgg16").eval()(images)
    assert cams.shape == (1, 2, 3, 3) and out["seg"].shape == (1, 3, 48, 48)


def test_width_sizes_the_small_backbone_only():
    assert build_backbone("small", width=16).out_channels["res5"] == 64
    assert build_backbone("small").out_channels["res5"] == 128  # default width 32
    assert build_backbone("vgg16", width=16).out_channels["conv5"] == 512  # fixed layout


def test_unknown_backbone_name_lists_valid_ones():
    with pytest.raises(BestieError, match="unknown name 'resnet18'") as err:
        build_backbone("resnet18")
    assert all(name in str(err.value) for name in BACKBONES)
    with pytest.raises(BestieError, match="unknown name"):
        BestieNet(3, backbone="hrnet")


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_pretrained_offline_is_a_clear_bestie_error(offline, name):
    with pytest.raises(BestieError) as err:
        build_backbone(name, pretrained=True)
    message = str(err.value)
    assert message.startswith(f"could not download the ImageNet weights of {name} (")
    assert "name resolution" in message and "\n" not in message
    # what to do: train from scratch, or put the file where torchvision looks for it
    assert "set `pretrained: false` to train from scratch" in message
    assert torch.hub.get_dir() in message and ".pth" in message


def test_hrnet_pretrained_offline_says_what_to_download(hub_offline, tmp_path):
    with pytest.raises(BestieError) as err:
        build_backbone("hrnet_w48", pretrained=True)
    message = str(err.value)
    assert message.startswith("could not download the ImageNet weights of hrnet_w48 (") and "\n" not in message
    assert "set `pretrained: false` to train from scratch" in message
    assert "`hf download timm/hrnet_w48.ms_in1k`" in message
    assert f"models--timm--hrnet_w48.ms_in1k it makes into {tmp_path}" in message


def test_pretrained_offline_through_the_network(offline):
    with pytest.raises(BestieError, match="could not download the ImageNet weights of resnet101"):
        BestieNet(3, backbone="resnet101", pretrained=True)


def test_small_backbone_has_no_pretrained_weights():
    with pytest.raises(BestieError, match="'small' backbone has no ImageNet weights: set `pretrained: false`"):
        build_backbone("small", pretrained=True)


# ------------------------------------------------------------------ PAM


def test_peak_attention_hand_worked():
    x = torch.tensor([
        [[[2.0, 1.4], [1.39, -5.0]],     # peak 2: 1.4 = 0.7 * 2 stays, 1.39 goes, -5 -> 0
         [[0.5, 0.35], [0.3, 0.0]]],     # its own peak 0.5: 0.35 stays, 0.3 goes
        [[[-1.0, -2.0], [-3.0, -4.0]],   # all negative: all 0
         [[10.0, 7.0], [6.99, 1.5]]],    # peak 10: 7 stays
    ])
    expected = torch.tensor([
        [[[2.0, 1.4], [0.0, 0.0]], [[0.5, 0.35], [0.0, 0.0]]],
        [[[0.0, 0.0], [0.0, 0.0]], [[10.0, 7.0], [0.0, 0.0]]],
    ])
    assert torch.equal(peak_attention(x, 0.7), expected)
    assert torch.equal(PeakAttention(0.7)(x), expected)


def test_peak_attention_alpha_zero_is_exactly_relu():
    x = torch.randn(2, 5, 7, 9)
    assert torch.equal(peak_attention(x, 0.0), torch.relu(x))


def test_peak_attention_alpha_one_keeps_only_the_peaks():
    x = torch.randn(3, 4, 6, 6)
    out = peak_attention(x, 1.0)
    peak = x.amax(dim=(-2, -1), keepdim=True)
    assert torch.equal(out > 0, (x == peak) & (peak > 0))


def test_peak_attention_rejects_alpha_outside_unit_interval():
    with pytest.raises(ValueError, match="alpha"):
        PeakAttention(1.5)


def test_pam_classifier_outputs_and_gradients():
    model = PAMClassifier(4, build_backbone("small"), alpha=0.7)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"logits", "cams"}
    assert out["logits"].shape == (2, 4) and out["cams"].shape == (2, 4, 8, 8)
    torch.testing.assert_close(out["logits"], out["cams"].mean(dim=(2, 3)))
    assert model.extra_convs[0].out_channels == 128  # the backbone's deepest width
    loss = multilabel_loss(out["logits"], torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]]))
    loss.backward()
    first_conv = model.backbone.stem[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    groups = model.param_groups()
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(model.parameters()))
    assert any(p is model.classifier.weight for p in groups["head"])


def test_pam_classifier_vgg16_layout():
    model = PAMClassifier(20, build_backbone("vgg16"))
    assert [c.out_channels for c in model.extra_convs] == [512, 512, 512]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out["cams"].shape == (2, 20, 8, 8)


def test_multilabel_loss_is_multilabel_soft_margin():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expected = nn.MultiLabelSoftMarginLoss()(logits, labels)
    torch.testing.assert_close(multilabel_loss(logits, labels), expected)
    # by hand: -mean(y log s(x) + (1 - y) log(1 - s(x)))
    s = torch.sigmoid(logits)
    by_hand = -(labels * s.log() + (1 - labels) * (1 - s).log()).mean()
    torch.testing.assert_close(multilabel_loss(logits, labels), by_hand)


# ------------------------------------------------------------------ BESTIE network


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (97, 130)])
def test_bestie_outputs_at_input_size(size):
    model = BestieNet(5, backbone="small")
    out = model(torch.randn(2, 3, *size))
    assert set(out) == {"seg", "center", "offset"}
    assert out["seg"].shape == (2, 6, *size)
    assert out["center"].shape == (2, 5, *size)
    assert out["offset"].shape == (2, 2, *size)


def test_bestie_resnet50_from_scratch():
    model = BestieNet(3, backbone="resnet50", pretrained=False).eval()
    assert model.semantic_decoder.aspp.branches[1][0].dilation == (6, 6)  # output stride 16
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, 4, 64, 64), "center": (2, 3, 64, 64), "offset": (2, 2, 64, 64)}


def test_bestie_hrnet_forward_backward():
    model = BestieNet(3, backbone="hrnet_w32")
    # the decoder fuses every branch, with widths from the backbone's channels; ASPP at stride 32
    assert [f.project[0].in_channels for f in model.semantic_decoder.fusions] == [128, 64, 32]
    assert model.semantic_decoder.aspp.branches[0][0].in_channels == 256
    assert model.instance_decoder.aspp.branches[1][0].dilation == (3, 3)
    out = model(torch.randn(2, 3, 64, 80))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, 4, 64, 80), "center": (2, 3, 64, 80), "offset": (2, 2, 64, 80)}
    sum(v.square().mean() for v in out.values()).backward()
    # DDP (without find_unused_parameters) needs a gradient for every parameter
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_untrained_bestie_predicts_no_centers():
    model = BestieNet(4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out["center"].abs().max() < 0.05  # far below the 0.1 inference threshold
    assert out["offset"].abs().max() < 0.5


def test_offsets_are_in_input_pixels_per_axis():
    """A head output of one decoder cell is one cell's size in input pixels, dy and dx apart."""
    model = BestieNet(2).eval()
    predictor = model.offset_head.predictor
    nn.init.zeros_(predictor.weight)
    with torch.no_grad():
        predictor.bias.copy_(torch.tensor([1.0, -1.0]))
        offset = model(torch.randn(1, 3, 64, 90))["offset"]
    # decoder grid at stride 4: 16 x 23 cells for 64 x 90 px
    torch.testing.assert_close(offset[0, 0], torch.full((64, 90), 64 / 16))
    torch.testing.assert_close(offset[0, 1], torch.full((64, 90), -90 / 23))


def test_bestie_eval_is_deterministic():
    model = BestieNet(3).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = model(images), model(images)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bestie_trains_with_a_batch_of_one():
    model = BestieNet(3).train()
    out = model(torch.randn(1, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    assert model.backbone.stem[0][0].weight.grad is not None
    assert model.center_head.predictor.weight.grad is not None


def test_aspp_shape():
    aspp = ASPP(16, 8, rates=(1, 2, 3))
    assert aspp(torch.randn(2, 16, 9, 11)).shape == (2, 8, 9, 11)


@pytest.mark.parametrize("backbone", ["small", "hrnet_w32"])
def test_bn_momentum_and_sync_batchnorm_conversion(backbone):
    model = BestieNet(3, backbone, bn_momentum=0.01)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)
    assert all(m.momentum == 0.1 for m in BestieNet(3).modules() if isinstance(m, nn.BatchNorm2d))
    # every norm is a BatchNorm, so under DDP every one is synchronised
    assert not any(isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)) for m in model.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == len(norms)
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_custom_backbone_instance_is_used_as_is():
    backbone = SmallBackbone(width=16)
    model = BestieNet(2, backbone=backbone)
    assert model.backbone is backbone
    assert model(torch.randn(2, 3, 32, 48))["seg"].shape == (2, 3, 32, 48)
