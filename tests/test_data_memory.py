"""The dataset's index in bounded memory (`CompactRecords`, `.coco` built on first use): the same items bit for bit as
from a plain list of records, a small pickle for spawned workers, the same COCOeval metrics, one read per file."""
import collections
import copy
import json
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcnn_nb import data
from mrcnn_nb.bench import make_coco_scale_annotations
from mrcnn_nb.data import (COCODataset, CompactRecords, _annotation_record, _index_records, _quiet_coco,
                           load_coco_json, plot_coco_annotations)
from mrcnn_nb.evaluate import coco_evaluate, to_coco_results
from mrcnn_nb.model import get_config
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import load_splits


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("mem") / "s", n_train=6, n_val=4, size=96, seed=3, progress=False)


@pytest.fixture(scope="module")
def crowd_root(tmp_path_factory):
    "COCO-like: 640x480 images, polygons in several parts, uncompressed-RLE crowds, images without annotations."
    root = tmp_path_factory.mktemp("crowd")
    make_coco_scale_annotations(root, n_images=24, n_annotations=90, split="val", seed=1, crowd_fraction=0.15)
    return root


def plain_records(ds, skip_empty=False) -> list:
    "The records as a list of Python dicts, indexed from the file read again: the dataset's storage before."
    record = partial(_annotation_record, ann_file=ds.ann_file, categories=ds.categories,
                     num_keypoints=len(ds.keypoint_names), with_masks=ds.with_masks, bad_polygons="error")
    return _index_records(load_coco_json(ds.ann_file), record, skip_empty, collections.Counter())


def same_bits(a, b) -> bool:
    "Equal to the last bit: tensors of the same dtype, shape and bytes; dicts key by key; other values by type and ==."
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.numpy().tobytes() == b.numpy().tobytes())
    if isinstance(a, dict): return isinstance(b, dict) and list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("which", ["shapes", "crowd"])
def test_compact_items_are_bitwise_those_of_a_plain_list(which, shapes_root, crowd_root):
    root, split = (shapes_root, "train") if which == "shapes" else (crowd_root, "val")
    ds = COCODataset(root, split)
    assert isinstance(ds.records, CompactRecords)
    ref = copy.copy(ds)
    ref.records = plain_records(ds)
    assert len(ds) == len(ref.records) > 0 and list(ds.records) == ref.records
    for i in range(len(ds)):
        (img, t), (ref_img, ref_t) = ds[i], ref[i]
        assert same_bits(img, ref_img) and same_bits(t, ref_t), f"item {i} differs"


def test_the_dataset_pickles_to_its_compact_records(crowd_root):
    ds = COCODataset(crowd_root, "val")
    ds.coco                                               # built: a spawned worker must not get it either
    assert ds._raw.nbytes > 40_000
    blob = pickle.dumps(ds)
    assert len(blob) < ds.records.nbytes + 20_000, (len(blob), ds.records.nbytes)
    assert b"pycocotools" not in blob
    back = pickle.loads(blob)
    assert all(same_bits(back[i][1], ds[i][1]) for i in range(len(ds)))
    assert back.coco.dataset == ds.coco.dataset           # a copy elsewhere reads the file for it


def shifted_ground_truth(ds, shift=0.1) -> list:
    "Each object of `ds` as a detection, its box moved by `shift` of its size, its mask by 3 pixels, scores decreasing."
    preds = []
    for i in range(len(ds)):
        t = ds[i][1]
        b = t["boxes"].clone()
        b += shift * torch.cat([b[:, 2:] - b[:, :2]] * 2, 1)
        scores = torch.linspace(1.0, 0.5, len(b))
        masks = t["masks"].roll(3, -1)[:, None]
        preds.append((t["image_id"], dict(boxes=b, labels=t["labels"], scores=scores, masks=masks)))
    return preds


def test_coco_built_from_the_kept_content_evaluates_as_the_file_does(crowd_root):
    ds = COCODataset(crowd_root, "val")
    before = _quiet_coco(load_coco_json(ds.ann_file))      # what the dataset held before: the file, indexed at once
    assert ds.coco.dataset == before.dataset
    assert any(a["iscrowd"] for a in ds.coco.dataset["annotations"])
    results = to_coco_results(shifted_ground_truth(ds), ds.categories.cat_ids)
    new, old = coco_evaluate(ds.coco, results), coco_evaluate(before, results)
    numbers = lambda m: json.dumps({t: {k: v for k, v in r.items() if k != "summary"} for t, r in m.items()},
                                   sort_keys=True)
    assert numbers(new) == numbers(old)                   # every number, NaNs included (the summary text has timings)
    assert 0 < new["bbox"]["stats"]["AP"] < 1 and 0 < new["segm"]["stats"]["AP"] < 1


def test_training_and_evaluation_read_each_file_once(shapes_root, monkeypatch):
    reads, real = collections.Counter(), data.load_coco_json
    monkeypatch.setattr(data, "load_coco_json", lambda path: reads.update([Path(path).name]) or real(path))
    train_set, val_set = load_splits(get_config("TINY_FPN"), shapes_root)
    train_set[0]
    results = to_coco_results(shifted_ground_truth(val_set), val_set.categories.cat_ids)
    assert coco_evaluate(val_set.coco, results)["bbox"]["stats"]["AP"] > 0
    plot_coco_annotations(val_set, [val_set.records[0]["id"]])
    assert reads == {"instances_train.json": 1, "instances_val.json": 1}, reads


def test_cli_bench_data_coco_scale(tmp_path, capsys):
    from mrcnn_nb.cli import main
    args = ["bench", "data", "--coco-scale", "--images", "300", "--workers", "2", "--items", "40", "--work", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "this code" in out and "worker 1" in out and "total_pss_mib" in out
    assert (tmp_path / "coco_scale_300" / "annotations" / "instances_train2017.json").exists()   # kept for next time
