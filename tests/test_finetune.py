"""Your own data: fine-tuning across class counts -- the trained 8-class TINY_FPN (and torchvision's 91-class
layout) start a model of another class count, exactly the class-specific predictors left initialized; COCO split
names found without flags."""
import json
import shutil

import pytest
import torch

from mrcnn_nb.cli import main
from mrcnn_nb.model import build_model, get_config
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import demo_checkpoint, load_checkpoint, load_initial_weights

CLASS_SPECIFIC = ["box.predictor.cls_score.weight", "box.predictor.cls_score.bias", "box.predictor.bbox_pred.weight",
                  "box.predictor.bbox_pred.bias", "mask.predictor.mask_fcn_logits.weight",
                  "mask.predictor.mask_fcn_logits.bias"]


def _left_initialized(said: str) -> list:
    return said.split("left initialized for this class count: ")[1].split(", ")


@pytest.fixture
def three_classes(tmp_path):
    "The synthetic shapes relabelled into 2 categories (3 classes with the background)."
    root = make_shapes(tmp_path / "s", n_train=6, n_val=3, seed=0, progress=False)
    for split in ("train", "val"):
        f = root / "annotations" / f"instances_{split}.json"
        d = json.loads(f.read_text())
        d["categories"] = [dict(id=1, name="round"), dict(id=2, name="other")]
        for a in d["annotations"]: a["category_id"] = 1 if a["category_id"] in (1, 4) else 2
        f.write_text(json.dumps(d))
    return root


def test_the_trained_8_class_checkpoint_starts_a_3_class_run(three_classes, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    status = main(["train", "--data", str(three_classes), "--weights", str(demo_checkpoint()), "--out", str(out),
                   "--iters", "2", "--batch", "2", "--val-split", "", "warmup_iters=1"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    line = next(l for l in printed.splitlines() if "left initialized" in l)
    assert _left_initialized(line) == CLASS_SPECIFIC, line
    trained, start = load_checkpoint(out / "model_final.pth")["model"], load_checkpoint(demo_checkpoint())["model"]
    assert trained["box.predictor.cls_score.weight"].shape[0] == 3
    assert not torch.equal(trained["box.head.fc6.weight"], start["box.head.fc6.weight"].float())   # it trained


def test_torchvision_91_class_weights_start_a_4_class_model(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    path = tmp_path / "tv.pth"
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict(), path)
    cfg = get_config("R_50_FPN", num_classes=4)
    said = load_initial_weights(build_model(cfg), cfg, path)
    assert said.startswith("torchvision detection") and _left_initialized(said) == CLASS_SPECIFIC, said


def test_coco_split_names_are_found_without_flags(three_classes, tmp_path, capsys):
    "A root with train2017/val2017 (as COCO ships) trains without --train-split/--val-split."
    for split in ("train", "val"):
        (three_classes / split).rename(three_classes / f"{split}2017")
        (three_classes / "annotations" / f"instances_{split}.json").rename(
            three_classes / "annotations" / f"instances_{split}2017.json")
    status = main(["train", "--data", str(three_classes), "--out", str(tmp_path / "run"), "--iters", "1",
                   "--batch", "2", "warmup_iters=1"])
    out = capsys.readouterr().out
    assert status == 0 and "(train2017, evaluated on val2017)" in out, out
