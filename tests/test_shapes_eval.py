"""The synthetic datasets load in pycocotools, and their ground truth submitted as detections scores AP = 1."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_nb.data import COCODataset
from mrcnn_nb.shapes import KEYPOINT_NAMES, SHAPE_CLASSES, make_shapes


def gt_as_detections(coco: COCO, with_keypoints: bool) -> list:
    dets = []
    for a in coco.dataset["annotations"]:
        rle = coco.annToRLE(a)
        d = dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0,
                 segmentation=dict(size=rle["size"], counts=rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]))
        if with_keypoints: d["keypoints"] = a["keypoints"]
        dets.append(d)
    return dets


def evaluate(coco: COCO, dets: list, iou_type: str, sigmas=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(coco, coco.loadRes(dets), iou_type)
        if sigmas is not None: E.params.kpt_oks_sigmas = np.array(sigmas)
        E.evaluate(); E.accumulate(); E.summarize()
    return E.stats


@pytest.mark.parametrize("split", ["train", "val"])
def test_instances_gt_scores_ap_1(shapes_root, split):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shapes_root / "annotations" / f"instances_{split}.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == SHAPE_CLASSES
    dets = gt_as_detections(coco, False)
    for t in ("bbox", "segm"):
        assert evaluate(coco, dets, t)[0] == pytest.approx(1.0), t


def test_keypoints_gt_scores_ap_1(keypoints_root):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(keypoints_root / "annotations" / "person_keypoints_val.json"))
    cat = coco.loadCats(1)[0]
    assert cat["keypoints"] == KEYPOINT_NAMES and len(cat["oks_sigmas"]) == len(KEYPOINT_NAMES)
    dets = gt_as_detections(coco, True)
    for t in ("bbox", "segm", "keypoints"):
        assert evaluate(coco, dets, t, cat["oks_sigmas"] if t == "keypoints" else None)[0] == pytest.approx(1.0), t


def test_perturbed_detections_score_below_1(shapes_root):
    "The evaluation above can fail: shifted boxes and eroded masks do not score 1."
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shapes_root / "annotations" / "instances_val.json"))
    dets = gt_as_detections(coco, False)
    for d in dets:
        x, y, w, h = d["bbox"]; d["bbox"] = [x + 0.3 * w, y, w, h]
        m = mask_utils.decode(d["segmentation"]); m[:, : m.shape[1] // 2] = 0
        r = mask_utils.encode(np.asfortranarray(m)); d["segmentation"] = dict(size=r["size"], counts=r["counts"].decode())
    assert evaluate(coco, dets, "bbox")[0] < 0.9 and evaluate(coco, dets, "segm")[0] < 0.9


def test_masks_match_annotations_and_boxes(shapes_root):
    "What the loader returns equals what pycocotools rasterizes, and boxes are the masks' extents."
    ds = COCODataset(shapes_root, "val")
    for i in range(len(ds)):
        _, t = ds[i]
        anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[t["image_id"]]))
        assert len(anns) == len(t["masks"])
        for a, m, b in zip(anns, t["masks"], t["boxes"]):
            assert torch.equal(m, torch.from_numpy(ds.coco.annToMask(a)))
            ys, xs = torch.where(m > 0)
            assert b.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_dataset_has_what_it_promises(tmp_path):
    root = make_shapes(tmp_path, n_train=120, n_val=0, size=128, seed=3, progress=False)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    areas = np.array([a["area"] for a in data["annotations"]])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any() and (areas >= 96 ** 2).any()
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 8))
    polys = [a for a in data["annotations"] if isinstance(a["segmentation"], list)]
    rles = [a for a in data["annotations"] if isinstance(a["segmentation"], dict)]
    assert polys and rles and any(len(a["segmentation"]) == 2 for a in polys)  # crosses are two-part polygons
    # occlusion: objects without holes are stored as polygons unless something covers them, so an RLE of a
    # class other than the ring is an occluded object; and visible masks never overlap
    ring = SHAPE_CLASSES.index("ring") + 1
    assert any(a["category_id"] != ring for a in rles)
    ds = COCODataset(root, "train")
    overlaps = [int((ds[i][1]["masks"].sum(0) > 1).sum()) for i in range(20)]
    assert max(overlaps) == 0


def test_keypoint_visibility_flags(keypoints_root):
    data = json.loads((keypoints_root / "annotations" / "person_keypoints_val.json").read_text())
    v = np.array([a["keypoints"][2::3] for a in data["annotations"]])
    assert (v == 2).any() and set(np.unique(v)) <= {0, 1, 2}
    for a in data["annotations"]:
        k = np.array(a["keypoints"]).reshape(-1, 3)
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
        assert (k[k[:, 2] == 0, :2] == 0).all()  # unlabeled keypoints are stored as 0, 0, 0


def test_keypoints_hidden_and_out_of_image_occur(tmp_path):
    root = make_shapes(tmp_path, kind="keypoints", n_train=60, n_val=0, size=128, seed=1, progress=False)
    data = json.loads((root / "annotations" / "person_keypoints_train.json").read_text())
    v = np.concatenate([a["keypoints"][2::3] for a in data["annotations"]])
    assert (v == 1).any() and (v == 0).any() and (v == 2).any()


def test_deterministic_per_seed(tmp_path):
    a = make_shapes(tmp_path / "a", n_train=3, n_val=2, size="96x64", seed=5, progress=False)
    b = make_shapes(tmp_path / "b", n_train=3, n_val=2, size="96x64", seed=5, progress=False)
    c = make_shapes(tmp_path / "c", n_train=3, n_val=2, size="96x64", seed=6, progress=False)
    name = "annotations/instances_train.json"
    assert (a / name).read_text() == (b / name).read_text() != (c / name).read_text()
    img = "train/000000000002.png"
    assert (a / img).read_bytes() == (b / img).read_bytes()
    assert COCODataset(a, "val")[0][0].shape == (3, 64, 96)


def test_a_run_killed_while_generating_leaves_nothing_the_next_run_trusts(tmp_path):
    """Kill -9 while the cached dataset is being generated: no half dataset at the cache's path, and the next call makes the
    whole one (the old code wrote into the final folder, and every later run refused it until the user deleted it)."""
    import signal
    import subprocess
    import sys
    import time
    from mrcnn_nb.shapes import cached_shapes
    root = tmp_path / "set"
    code = ("import sys; from mrcnn_nb.shapes import cached_shapes; "
            "cached_shapes(root=sys.argv[1], n_train=400, n_val=50, size=64, progress=False)")
    p = subprocess.Popen([sys.executable, "-c", code, str(root)], env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        t0 = time.time()
        while not any(any(d.glob("*/*.png")) for d in [*tmp_path.glob("set.partial-*"), root]):
            assert p.poll() is None and time.time() - t0 < 120, "generation did not start"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert not (root / "shapes.json").exists() and not (root.exists() and any(root.iterdir()))
    got = cached_shapes(root=root, n_train=4, n_val=2, size=64, progress=False)
    assert len(json.loads((got / "annotations" / "instances_val.json").read_text())["images"]) == 2
    assert not list(tmp_path.glob("set.partial-*"))
