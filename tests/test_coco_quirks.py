"""Each quirk of real COCO annotation files, on files these tests write themselves."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from conftest import write_coco
from mrcnn_nb.core import UserInputError
from mrcnn_nb.data import COCODataset, RandomHorizontalFlip, keypoint_flip_indices
from mrcnn_nb.model import Transform

H, W = 40, 60
CATS = [dict(id=1, name="person"), dict(id=18, name="dog"), dict(id=90, name="toothbrush")]


def image(i, h=H, w=W):
    return dict(id=i, file_name=f"{i:06d}.png", height=h, width=w)


def ann(i, image_id, cat, bbox, segm, **kw):
    return dict(id=i, image_id=image_id, category_id=cat, bbox=bbox, area=bbox[2] * bbox[3], iscrowd=0, segmentation=segm, **kw)


def box_poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask):
    flat = mask.flatten(order="F")
    counts, run, val = [], 0, 0
    for px in flat:
        if px != val:
            counts.append(run); run, val = 0, px
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_multi_part_polygon(tmp_path):
    write_coco(tmp_path, "val", [image(1)], [ann(1, 1, 1, [2, 2, 36, 26], [box_poly(2, 2, 10, 10), box_poly(30, 20, 38, 28)])], CATS)
    _, t = COCODataset(tmp_path, "val")[0]
    m = t["masks"][0]
    assert m[5, 5] == 1 and m[24, 34] == 1 and m[15, 20] == 0  # both parts, nothing between them
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([box_poly(2, 2, 10, 10), box_poly(30, 20, 38, 28)], H, W)))
    assert torch.equal(m, torch.from_numpy(expected))


def test_compressed_and_uncompressed_rle(tmp_path):
    mask = np.zeros((H, W), np.uint8); mask[10:30, 5:25] = 1; mask[12:16, 8:12] = 0  # with a hole
    comp = mask_utils.encode(np.asfortranarray(mask)); comp["counts"] = comp["counts"].decode()
    write_coco(tmp_path, "val", [image(1)],
               [ann(1, 1, 1, [5, 10, 20, 20], comp), ann(2, 1, 18, [5, 10, 20, 20], uncompressed_rle(mask))], CATS)
    _, t = COCODataset(tmp_path, "val")[0]
    assert torch.equal(t["masks"][0], torch.from_numpy(mask)) and torch.equal(t["masks"][1], torch.from_numpy(mask))


def test_crowd_left_out_of_targets_but_kept_for_evaluation(tmp_path):
    crowd = ann(2, 1, 1, [0, 0, 60, 40], uncompressed_rle(np.ones((H, W), np.uint8))); crowd["iscrowd"] = 1
    write_coco(tmp_path, "val", [image(1)], [ann(1, 1, 18, [2, 2, 8, 8], [box_poly(2, 2, 10, 10)]), crowd], CATS)
    ds = COCODataset(tmp_path, "val")
    _, t = ds[0]
    assert t["labels"].tolist() == [2] and ds.stats["crowd_skipped"] == 1
    assert len(ds.coco.getAnnIds(imgIds=[1], iscrowd=True)) == 1  # evaluation's COCO object keeps it


def test_images_without_annotations(tmp_path):
    write_coco(tmp_path, "val", [image(1), image(2), image(3)], [ann(1, 2, 1, [2, 2, 8, 8], [box_poly(2, 2, 10, 10)])], CATS)
    ds = COCODataset(tmp_path, "val")
    assert len(ds) == 3 and ds.stats["images_without_annotations"] == 2
    img, t = ds[0]
    assert img.shape == (3, H, W) and t["boxes"].shape == (0, 4) and t["masks"].shape == (0, H, W) and t["labels"].dtype == torch.int64
    train = COCODataset(tmp_path, "val", skip_empty=True)
    assert [r["id"] for r in train.records] == [2] and train.stats["empty_images_skipped"] == 2


def test_category_ids_with_gaps(tmp_path):
    anns = [ann(1, 1, 90, [1, 1, 5, 5], [box_poly(1, 1, 6, 6)]), ann(2, 1, 1, [10, 1, 5, 5], [box_poly(10, 1, 15, 6)]),
            ann(3, 1, 18, [20, 1, 5, 5], [box_poly(20, 1, 25, 6)])]
    write_coco(tmp_path, "val", [image(1)], anns, list(reversed(CATS)))
    ds = COCODataset(tmp_path, "val")
    _, t = ds[0]
    assert t["labels"].tolist() == [3, 1, 2] and ds.num_classes == 3
    assert [ds.categories.to_cat_id(l) for l in t["labels"].tolist()] == [90, 1, 18]
    assert ds.class_names == ["person", "dog", "toothbrush"]


def test_degenerate_boxes_dropped_and_counted(tmp_path):
    anns = [ann(1, 1, 1, [5, 5, 0, 10], [box_poly(5, 5, 6, 15)]),     # zero width
            ann(2, 1, 1, [5, 5, 10, -3], [box_poly(5, 5, 15, 6)]),    # negative height
            ann(3, 1, 1, [70, 5, 10, 10], [box_poly(5, 5, 15, 15)]),  # wholly right of the image
            ann(4, 1, 18, [5, 5, 10, 10], [box_poly(5, 5, 15, 15)])]
    write_coco(tmp_path, "val", [image(1)], anns, CATS)
    ds = COCODataset(tmp_path, "val")
    _, t = ds[0]
    assert t["labels"].tolist() == [2] and ds.stats["degenerate_boxes_dropped"] == 3
    # a box sticking out of the image is clipped, not dropped
    write_coco(tmp_path / "b", "val", [image(1)], [ann(1, 1, 1, [50, 30, 20, 20], [box_poly(50, 30, 60, 40)])], CATS)
    _, t = COCODataset(tmp_path / "b", "val")[0]
    assert t["boxes"].tolist() == [[50.0, 30.0, 60.0, 40.0]]


def test_keypoints_with_visibility_and_flip(tmp_path):
    names = ["nose", "left_eye", "right_eye"]
    cats = [dict(id=1, name="person", keypoints=names, skeleton=[[1, 2], [1, 3]])]
    kps = [20, 10, 2, 15, 8, 1, 0, 0, 0]  # visible, labeled-but-hidden, unlabeled
    write_coco(tmp_path, "val", [image(1)], [ann(1, 1, 1, [10, 5, 20, 20], [box_poly(10, 5, 30, 25)], keypoints=kps, num_keypoints=2)],
               cats, kind="keypoints")
    ds = COCODataset(tmp_path, "val", kind="keypoints")
    assert ds.keypoint_names == names and ds.keypoint_flip == [0, 2, 1] == keypoint_flip_indices(names)
    img, t = ds[0]
    assert t["keypoints"].shape == (1, 3, 3)
    assert t["keypoints"][0].tolist() == [[20, 10, 2], [15, 8, 1], [0, 0, 0]]
    _, f = RandomHorizontalFlip(1.0, ds.keypoint_flip)(img, t)
    # left_eye (hidden) moved to the right_eye slot, mirrored; the unlabeled one stays all-zero
    assert f["keypoints"][0].tolist() == [[W - 20, 10, 2], [0, 0, 0], [W - 15, 8, 1]]
    _, r = Transform(min_size=(80,), max_size=1000).eval().resize(img.float(), t)
    assert r["keypoints"][0, 0].tolist() == [40, 20, 2]


def test_polygon_with_fewer_than_three_points(tmp_path):
    write_coco(tmp_path, "val", [image(1)], [ann(7, 1, 1, [2, 2, 8, 8], [[2, 2, 10, 10]]), ann(8, 1, 1, [2, 2, 8, 8], [box_poly(2, 2, 9, 9)])], CATS)
    with pytest.raises(UserInputError, match=r"instances_val.json: annotation 7: polygon 0 has 4 coordinates"):
        COCODataset(tmp_path, "val")
    ds = COCODataset(tmp_path, "val", bad_polygons="drop")
    assert ds.stats["bad_polygons_dropped"] == 1 and len(ds[0][1]["boxes"]) == 1


@pytest.mark.parametrize("where, value, says", [
    ("image", [1], "image id [1] must be an integer"),
    ("category", {"a": 1}, "category id {'a': 1} must be an integer"),
    ("image_id", [1], "image_id must be an integer, got [1]"),
    ("category_id", {"x": 1}, "category_id must be an integer, got {'x': 1}"),
])
def test_ids_that_are_not_integers_are_named(tmp_path, where, value, says):
    "Ids that are lists or objects (a hand-edited file) are refused in one line, not a TypeError from a set lookup."
    images, anns, cats = [image(1)], [ann(1, 1, 1, [2, 2, 10, 10], [box_poly(2, 2, 12, 12)])], [dict(CATS[0])]
    if where == "image": images[0]["id"] = value; anns[0]["image_id"] = value
    elif where == "category": cats[0]["id"] = value; anns[0]["category_id"] = value
    else: anns[0][where] = value
    write_coco(tmp_path, "val", images, anns, cats)
    with pytest.raises(UserInputError) as e: COCODataset(tmp_path, "val")
    assert says in str(e.value), str(e.value)
