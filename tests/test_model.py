"""The assembled model: every preset builds and runs a training and an inference step on CPU, and bad
input and bad weights are refused clearly. (Parity with torchvision, stage by stage, is in 11_model.)"""
import pytest
import torch

from mrcnn_nb.core import UserInputError
from mrcnn_nb.model import PRESETS, build_model, get_config, load_torchvision_weights, torchvision_to_ours


def step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg.replace(min_size=(96,), max_size=128))
    img = torch.rand(3, 90, 120)
    masks = torch.zeros(2, 90, 120, dtype=torch.uint8); masks[0, 10:70, 10:60] = 1; masks[1, 40:80, 70:110] = 1
    t = dict(boxes=torch.tensor([[10., 10, 60, 70], [70, 40, 110, 80]]), labels=torch.tensor([1, 1]), masks=masks)
    if cfg.keypoints:
        t["keypoints"] = torch.cat([torch.rand(2, cfg.num_keypoints, 2) * 40 + 15, torch.full((2, cfg.num_keypoints, 1), 2.0)], 2)
    model.train()
    losses = model([img, img.flip(-1)], [t, dict(t, boxes=t["boxes"][:1], labels=t["labels"][:1], masks=t["masks"][:1],
                                                 **({"keypoints": t["keypoints"][:1]} if cfg.keypoints else {}))])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model([img])[0]
    return losses, out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_and_infers(name):
    cfg = PRESETS[name]
    losses, out = step(cfg)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    if cfg.mask: expected.add("loss_mask")
    if cfg.keypoints: expected.add("loss_keypoint")
    assert set(losses) == expected
    assert set(out) >= {"boxes", "labels", "scores"}
    if cfg.mask: assert out["masks"].shape[-2:] == (90, 120)
    if cfg.keypoints: assert out["keypoints"].shape[1:] == (cfg.num_keypoints, 3)


@pytest.mark.parametrize("variant", [dict(box_roi="pool", mask_roi="pool"), dict(box_roi="warp", mask_roi="warp", roi_mode="max"),
                                     dict(roi_mode="max"), dict(roi_aligned=True), dict(mask_loss="softmax"), dict(mask_agnostic=True),
                                     dict(mask_agnostic=True, mask_loss="softmax"), dict(mask_head="mlp2"), dict(mask_head="mlp3"),
                                     dict(mask=False), dict(norm="frozen_bn"), dict(groups=4, width_per_group=4), dict(channels_last=False)])
def test_variants_of_the_tiny_model(variant):
    losses, out = step(get_config("TINY_FPN", **variant))
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_errors():
    with pytest.raises(UserInputError, match=r"unknown config 'R50'"): get_config("R50")
    with pytest.raises(UserInputError, match=r"unknown config key\(s\) \['backbone'\]; valid keys"): get_config("TINY_FPN", backbone="r50")
    with pytest.raises(UserInputError, match=r"config features='C3': expected one of 'FPN', 'C4', 'C5'"): get_config("TINY_FPN", features="C3")
    with pytest.raises(UserInputError, match=r"config num_classes=1: expected at least 2"): get_config("TINY_FPN", num_classes=1)
    with pytest.raises(UserInputError, match=r"config mask_loss='dice'"): get_config("TINY_FPN", mask_loss="dice")


def test_bad_images_and_targets():
    model = build_model(get_config("TINY_FPN"))
    with pytest.raises(ValueError, match=r"images\[0\] must be a \(3, H, W\)"): model.eval()([torch.rand(64, 64)])
    with pytest.raises(TypeError, match=r"uint8 \(0-255\) or floating point"): model.eval()([torch.zeros(3, 8, 8, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"non-empty list"): model.eval()([])
    model.train()
    with pytest.raises(ValueError, match=r"needs targets"): model([torch.rand(3, 64, 64)])
    m = torch.zeros(1, 64, 64)
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..7"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.tensor([[1., 1, 9, 9]]), labels=torch.tensor([8]), masks=m)])
    with pytest.raises(ValueError, match=r"\['boxes'\] must be \(N, 4\)"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.tensor([1., 1, 9, 9]), labels=torch.tensor([1]), masks=m)])
    with pytest.raises(ValueError, match=r"1 images but 2 targets"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0), masks=m[:0])] * 2)
    # what a training step needs of a target, refused before it runs (a zero-width box gave an inf box loss)
    with pytest.raises(ValueError, match=r"targets\[0\] needs \['masks'\]"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.tensor([[1., 1, 9, 9]]), labels=torch.tensor([1]))])
    with pytest.raises(ValueError, match=r"\['boxes'\]\[0\] = \[9.0, 1.0, 9.0, 9.0\] has no positive width"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.tensor([[9., 1, 9, 9]]), labels=torch.tensor([1]), masks=m)])
    with pytest.raises(ValueError, match=r"\['masks'\] must be \(N, H, W\) = \(1, 64, 64\)"):
        model([torch.rand(3, 64, 64)], [dict(boxes=torch.tensor([[1., 1, 9, 9]]), labels=torch.tensor([1]), masks=m[:, :32])])
    out = model.eval()([torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)])   # uint8 images are fine
    assert out[0]["masks"].shape[-2:] == (50, 70)


class Evil:
    "Any class: unpickling it would import and run code from the file's author."


def test_weights_are_read_safely_and_mismatches_listed(tmp_path):
    model = build_model(get_config("TINY_FPN"))
    torch.save({"backbone.body.conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserInputError, match=r"refused: the file holds pickled Python objects"):
        load_torchvision_weights(model, tmp_path / "evil.pth")
    sd = {("roi_heads.box_predictor." + k[len("box.predictor."):] if k.startswith("box.predictor.") else k): v for k, v in model.state_dict().items()}
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(5, 256)
    sd["roi_heads.extra.weight"] = torch.zeros(1)
    del sd["rpn.head.cls_logits.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserInputError, match=r"(?s)missing \(1\): rpn.head.cls_logits.bias.*unexpected \(1\): roi_heads.extra.weight.*wrong shape \(1\): box.predictor.cls_score.weight"):
        load_torchvision_weights(model, tmp_path / "bad.pth")
    with pytest.raises(UserInputError, match=r"weight file not found"): load_torchvision_weights(model, tmp_path / "nope.pth")


def test_legacy_torchvision_names_are_renamed():
    legacy = {"rpn.head.conv.weight": 1, "backbone.fpn.inner_blocks.2.bias": 2, "backbone.fpn.layer_blocks.0.weight": 3,
              "roi_heads.mask_head.mask_fcn3.weight": 4, "roi_heads.keypoint_predictor.kps_score_lowres.weight": 5,
              "backbone.body.bn1.num_batches_tracked": 6}
    assert torchvision_to_ours(legacy) == {"rpn.head.conv.0.0.weight": 1, "backbone.fpn.inner_blocks.2.0.bias": 2,
                                          "backbone.fpn.layer_blocks.0.0.weight": 3, "mask.head.2.0.weight": 4,
                                          "keypoint.predictor.kps_score_lowres.weight": 5}
