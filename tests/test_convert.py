"""Your own data: VIA, labelme, mask PNGs and COCO exports converted into our COCO layout. Each reader on files the
test writes, malformed ones included (the CLI exits with 2 and one line naming the file and the problem, and OUT is
not there afterwards); the round trips; the seeded split; a converted root trains and `mrcnn_nb show` draws it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mrcnn_nb import convert as cv
from mrcnn_nb.cli import main
from mrcnn_nb.core import UserInputError
from mrcnn_nb.data import COCODataset


@pytest.fixture(scope="module")
def samples():
    "Four small images of the new task, every class present."
    s = cv.make_custom(4, size=64, seed=0, n_range=(2, 3))
    assert {o["name"] for x in s for o in x["objects"]} == set(cv.CUSTOM_CLASSES)
    return s


def _run(capsys, *argv) -> tuple:
    "Exit status, stdout and stderr of `mrcnn_nb convert ARGV --quiet`."
    status = main(["convert", *argv, "--quiet"])
    out = capsys.readouterr()
    return status, out.out, out.err


def _via_project(src):
    path = src / "via_region_data.json"
    return path, json.loads(path.read_text())


# --- round trips -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["via", "labelme", "masks", "coco"])
def test_round_trip_gives_the_same_annotations(fmt, samples, tmp_path):
    assert cv.round_trip(fmt, samples, tmp_path) == {"bbox": 1.0, "segm": 1.0}


def test_the_round_trip_check_sees_a_changed_annotation(samples):
    truth = cv.custom_coco(samples)
    moved = json.loads(json.dumps(truth))
    moved["annotations"][0]["segmentation"] = [[v + 2 for v in moved["annotations"][0]["segmentation"][0]]]
    assert cv.annotation_agreement(truth, moved)["segm"] < 1.0
    fewer = dict(truth, annotations=truth["annotations"][1:])
    assert cv.annotation_agreement(truth, fewer)["bbox"] < 1.0


# --- the command, its report, the split --------------------------------------------------------------------------
def test_cli_converts_and_reports_per_split_and_class(samples, tmp_path, capsys):
    src = cv.write_labelme(samples, tmp_path / "lm")
    status, out, err = _run(capsys, "labelme", str(src), str(tmp_path / "out"), "--val-fraction", "0.5",
                            "--classes", "hexagon,heart,arrow")
    assert status == 0, err
    assert out.splitlines()[0].endswith("3 classes (ids 1..3: hexagon, heart, arrow)"), out
    assert "  train: 2 images" in out and "  val: 2 images" in out and "dropped: nothing" in out, out
    for split in ("train", "val"):
        ds = COCODataset(tmp_path / "out", split)
        assert ds.class_names == ["hexagon", "heart", "arrow"] and len(ds) == 2
        img, target = ds[0]
        assert img.shape == (3, 64, 64) and target["masks"].sum() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_val_fraction_is_seeded_and_reproducible(samples, tmp_path):
    src = cv.write_via(cv.make_custom(10, size=32, seed=3, n_range=(1, 1)), tmp_path / "via")
    def val_files(seed, name):
        cv.convert("via", src, tmp_path / name, val_fraction=0.3, seed=seed, progress=False)
        return [im["file_name"] for im in json.loads((tmp_path / name / "annotations" / "instances_val.json")
                                                     .read_text())["images"]]
    first, again, other = val_files(0, "a"), val_files(0, "b"), val_files(1, "c")
    assert len(first) == 3 and first == again and first != other
    assert cv.convert("via", src, tmp_path / "d", progress=False).images == {"train": 10}          # no val split


def test_converted_root_trains_and_shows(samples, tmp_path, capsys):
    torch.set_num_threads(1)
    src = cv.write_masks(samples, tmp_path / "m")
    assert _run(capsys, "masks", str(src), str(tmp_path / "data"))[0] == 0
    status = main(["train", "--data", str(tmp_path / "data"), "--iters", "2", "--batch", "2", "--val-split", "",
                   "warmup_iters=1", "--out", str(tmp_path / "run")])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert (tmp_path / "run" / "model_final.pth").is_file()
    status = main(["show", str(tmp_path / "data"), "--split", "train", "--n", "2", "--out", str(tmp_path / "s.png")])
    assert status == 0 and Image.open(tmp_path / "s.png").size[0] > 100, capsys.readouterr().err


# --- what the readers accept beyond what the writers write --------------------------------------------------------
def test_via_rects_old_regions_saved_projects_and_category(samples, tmp_path):
    src = tmp_path / "via"
    path, project = _via_project(cv.write_via(samples[:1], src).parent)
    entry = next(iter(project.values()))
    entry["regions"] = {"0": dict(shape_attributes=dict(name="rect", x=2, y=3, width=10, height=5),
                                  region_attributes={})}          # VIA 1: regions keyed by number; no class
    path.write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": project}))
    with pytest.raises(UserInputError, match="no region attribute 'class'"):
        cv.convert("via", src, tmp_path / "out", progress=False)
    report = cv.convert("via", src, tmp_path / "out", category="balloon", progress=False)
    assert report.classes == ["balloon"]
    ann = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["annotations"]
    assert ann[0]["segmentation"] == [[2, 3, 12, 3, 12, 8, 2, 8]] and ann[0]["bbox"] == [2, 3, 10, 5]


def test_labelme_rectangles(samples, tmp_path):
    src = cv.write_labelme(samples[:1], tmp_path / "lm")
    doc = json.loads((src / "photo_000.json").read_text())
    doc["shapes"] = [dict(label="box", points=[[20, 30], [4, 10]], shape_type="rectangle")]
    (src / "photo_000.json").write_text(json.dumps(doc))
    cv.convert("labelme", src, tmp_path / "out", progress=False)
    ann = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["annotations"]
    assert ann[0]["segmentation"] == [[4, 10, 20, 10, 20, 30, 4, 30]] and ann[0]["area"] == 16 * 20


def test_coco_export_rle_and_crowd_pass_through(samples, tmp_path):
    path = cv.write_coco_export(samples[:1], tmp_path / "rf")
    d = json.loads(path.read_text())
    m = np.zeros((64, 64), np.uint8)
    m[5:9, 5:15] = 1
    from mrcnn_nb.shapes import _rle_json
    d["annotations"].append(dict(id=99, image_id=0, category_id=1, segmentation=_rle_json(m), bbox=[5, 5, 10, 4],
                                 area=40, iscrowd=1))
    path.write_text(json.dumps(d))
    cv.convert("coco", path, tmp_path / "out", progress=False)
    ann = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["annotations"][-1]
    assert ann["iscrowd"] == 1 and ann["area"] == 40 and ann["segmentation"]["size"] == [64, 64]


def test_cvat_layout_images_folder_beside_annotations(samples, tmp_path):
    "CVAT: annotations/instances_default.json and images/ side by side."
    path = cv.write_coco_export(samples[:2], tmp_path / "rf")
    root = tmp_path / "cvat"
    (root / "annotations").mkdir(parents=True)
    path.rename(root / "annotations" / "instances_default.json")
    path.parent.rename(root / "images")
    report = cv.convert("coco", root / "annotations", tmp_path / "out", progress=False)
    assert report.images == {"train": 2} and sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "photo_000.png", "photo_001.png"]


# --- the drop policy ----------------------------------------------------------------------------------------------
def test_bad_polygons_drop_counts_per_cause(samples, tmp_path, capsys):
    src = cv.write_labelme(samples[:2], tmp_path / "lm")
    doc = json.loads((src / "photo_000.json").read_text())
    doc["shapes"][0]["points"] = doc["shapes"][0]["points"][:2]                        # a double click
    doc["shapes"][1]["points"] = [[1, 1], [2, 2], [3, 3]]                              # flat
    (src / "photo_000.json").write_text(json.dumps(doc))
    status, out, err = _run(capsys, "labelme", str(src), str(tmp_path / "out"), "--bad-polygons", "drop")
    assert status == 0, err
    assert "dropped: 1 polygon(s) with fewer than 3 points, 1 region(s) covering no pixel" in out, out
    n = sum(len(s["objects"]) for s in samples[:2]) - 2
    assert len(json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["annotations"]) == n


def test_masks_in_the_order_of_their_numbers_hidden_files_skipped(tmp_path):
    s = cv.make_custom(1, size=64, seed=1, n_range=(1, 1))
    names = [f"{k}_{n}" for k, n in [(0, "hexagon"), (1, "arrow"), (2, "hexagon"), (10, "heart")]]
    s[0]["objects"] = [dict(name=n.split("_")[1], polygon=np.array([[x, 2], [x + 4, 2], [x, 9]], float))
                       for x, n in zip((1, 10, 20, 30), names)]
    src = cv.write_masks(s, tmp_path / "m")
    assert sorted(p.stem for p in (src / "masks" / "photo_000").iterdir()) == ["0_hexagon", "1_arrow", "2_hexagon",
                                                                               "3_heart"]
    (src / "masks" / "photo_000" / "3_heart.png").rename(src / "masks" / "photo_000" / "10_heart.png")
    (src / "images" / ".DS_Store").write_bytes(b"\0\1")
    (src / "masks" / "photo_000" / ".DS_Store").write_bytes(b"\0\1")
    cv.convert("masks", src, tmp_path / "out", progress=False)
    anns = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["annotations"]
    assert [a["bbox"][0] for a in anns] == [1, 10, 20, 30]


def test_blank_mask_png_is_dropped_on_request(samples, tmp_path):
    src = cv.write_masks(samples[:1], tmp_path / "m")
    p = next((src / "masks" / "photo_000").glob("0_*.png"))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    report = cv.convert("masks", src, tmp_path / "out", bad_polygons="drop", progress=False)
    assert report.dropped == {"empty": 1}


# --- malformed input: exit 2, one line naming the file and the problem, no OUT ----------------------------------
def _drop_image(src, name="photo_001.png"): (src / name).unlink()
def _truncate_json(path): path.write_text(path.read_text()[:50])
def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))
def _first_via_region(d): return next(iter(d.values()))["regions"][0]
def _set(obj, **kw): obj.update(kw)


def _via_fault(fault):
    def plant(src):
        path = src / "via_region_data.json"
        if fault == "missing image": _drop_image(src)
        elif fault == "bad json": _truncate_json(path)
        elif fault == "two points": _edit_json(path, lambda d: _set(_first_via_region(d)["shape_attributes"],
                                                                     all_points_x=[1, 5], all_points_y=[1, 5]))
        elif fault == "outside": _edit_json(path, lambda d: _set(_first_via_region(d)["shape_attributes"],
                                                                  all_points_x=[1, 70, 1], all_points_y=[1, 1, 9]))
        elif fault == "ellipse": _edit_json(path, lambda d: _set(_first_via_region(d)["shape_attributes"],
                                                                  name="ellipse"))
        elif fault == "no class": _edit_json(path, lambda d: _set(_first_via_region(d), region_attributes={"t": "x"}))
        elif fault == "lengths": _edit_json(path, lambda d: _set(_first_via_region(d)["shape_attributes"],
                                                                  all_points_x=[1, 5, 9]))
        elif fault == "rect": _edit_json(path, lambda d: _set(_first_via_region(d), shape_attributes=dict(
            name="rect", x="2", y=3, width=4, height=5)))
        elif fault == "shape list": _edit_json(path, lambda d: _set(_first_via_region(d), shape_attributes=[1, 2]))
        return "via", path
    return plant


def _labelme_fault(fault):
    def plant(src):
        path = src / "photo_000.json"
        if fault == "size": _edit_json(path, lambda d: _set(d, imageHeight=100))
        elif fault == "circle": _edit_json(path, lambda d: _set(d["shapes"][0], shape_type="circle"))
        elif fault == "label": _edit_json(path, lambda d: _set(d["shapes"][0], label=""))
        elif fault == "points": _edit_json(path, lambda d: _set(d["shapes"][0], points=[1, 2, 3]))
        elif fault == "rectangle": _edit_json(path, lambda d: _set(d["shapes"][0], shape_type="rectangle",
                                                                    points=[[1, 2], [None, 9]]))
        elif fault == "missing image": _edit_json(path, lambda d: _set(d, imagePath="gone.png"))
        return "labelme", path
    return plant


def _masks_fault(fault):
    def plant(src):
        folder = src / "masks" / "photo_000"
        p = next(folder.glob("0_*.png"))
        if fault == "size": Image.open(p).resize((32, 32)).save(p)
        elif fault == "name": p = p.rename(folder / "heart.png")
        elif fault == "blank": Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
        elif fault == "no picture":
            p = src / "masks" / "photo_009"
            p.mkdir()
        elif fault == "truncated": p.write_bytes(p.read_bytes()[:40])
        elif fault == "jpeg": p = p.rename(p.with_suffix(".jpg"))
        elif fault == "two pictures":
            Image.open(src / "images" / "photo_000.png").save(src / "images" / "photo_000.jpg")
            p = src / "images" / "photo_000.png"
        return "masks", p
    return plant


def _coco_fault(fault):
    def plant(src):
        path = src / "_annotations.coco.json"
        if fault == "missing image":
            _drop_image(src, "photo_000.png")
            return "coco", src / "photo_000.png"
        if fault == "category": _edit_json(path, lambda d: _set(d["annotations"][0], category_id=7))
        elif fault == "name": _edit_json(path, lambda d: _set(d["categories"][1], name=None))
        elif fault == "size":
            _edit_json(path, lambda d: _set(d["images"][0], width=65))
            return "coco", src / "photo_000.png"
        elif fault == "outside":
            _edit_json(path, lambda d: _set(d["annotations"][0], segmentation=[[0, 0, 99, 0, 0, 9]]))
        return "coco", path
    return plant


WRITE = {"via": lambda s, d: cv.write_via(s, d).parent, "labelme": cv.write_labelme, "masks": cv.write_masks,
         "coco": lambda s, d: cv.write_coco_export(s, d).parent}
MALFORMED = [  # (plant a fault, what the one line must say)
    (_via_fault("missing image"), "photo_001.png: image file not found"),
    (_via_fault("bad json"), "malformed JSON"),
    (_via_fault("two points"), "region 0: polygon 0 has 4 coordinates"),
    (_via_fault("outside"), "region 0: point (70, 1) lies outside the 64x64 image"),
    (_via_fault("ellipse"), "region 0: unsupported shape 'ellipse'"),
    (_via_fault("no class"), "region 0: no region attribute 'class' (it has ['t'])"),
    (_via_fault("lengths"), "all_points_x and all_points_y must be lists of the same length"),
    (_via_fault("rect"), "region 0: rect x, y, width, height must be numbers, got ['2', 3, 4, 5]"),
    (_via_fault("shape list"), "region 0: shape_attributes must be an object"),
    (_labelme_fault("size"), "imageHeight x imageWidth is 100x64 but photo_000.png is 64x64"),
    (_labelme_fault("circle"), "shape 0: unsupported shape_type 'circle'"),
    (_labelme_fault("label"), "shape 0: label must be a non-empty string"),
    (_labelme_fault("points"), "shape 0: points must be a list of [x, y] pairs"),
    (_labelme_fault("rectangle"), "shape 0: points must be a list of [x, y] pairs of numbers"),
    (_labelme_fault("missing image"), "gone.png: image file not found"),
    (_masks_fault("size"), "mask is 32x32 (w x h) but photo_000.png is 64x64"),
    (_masks_fault("name"), "a mask file must be named <k>_<class>.png"),
    (_masks_fault("blank"), "blank mask"),
    (_masks_fault("no picture"), "mask folder without a picture"),
    (_masks_fault("truncated"), "unreadable or truncated image"),
    (_masks_fault("jpeg"), "a mask file must be named <k>_<class>.png"),
    (_masks_fault("two pictures"), "two pictures named photo_000 (photo_000.jpg)"),
    (_coco_fault("missing image"), "image file not found"),
    (_coco_fault("category"), "category_id 7 is not in 'categories'"),
    (_coco_fault("name"), "category 1: name must be a non-empty string, got None"),
    (_coco_fault("size"), "image is 64x64 (w x h) but _annotations.coco.json says 65x64"),
    (_coco_fault("outside"), "point (99, 0) lies outside the 64x64 image"),
]


@pytest.mark.parametrize("plant,says", MALFORMED, ids=[f"{p.__qualname__.split('.')[0][1:]}:{s[:30]}"
                                                       for p, s in MALFORMED])
def test_malformed_input_is_one_line_naming_the_file(plant, says, samples, tmp_path, capsys):
    fmt = plant.__qualname__.split("_")[1]
    src = WRITE[fmt](samples, tmp_path / "src")
    fmt, named = plant(src)
    status, out, err = _run(capsys, fmt, str(src), str(tmp_path / "out"))
    assert status == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and says in err and str(named) in err, err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_classes_option_and_output_folder_are_checked(samples, tmp_path, capsys):
    src = cv.write_via(samples, tmp_path / "via").parent
    status, _, err = _run(capsys, "via", str(src), str(tmp_path / "out"), "--classes", "heart,arrow")
    assert status == 2 and "is not in --classes heart,arrow" in err and "photo_" in err, err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    status, _, err = _run(capsys, "via", str(src), str(tmp_path / "full"))
    assert status == 2 and "full: already exists and is not empty" in err, err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert _run(capsys, "via", str(src), str(tmp_path / "empty"))[0] == 0         # an empty folder is used
    status, _, err = _run(capsys, "via", str(src), str(tmp_path / "o2"), "--val-fraction", "1.5")
    assert status == 2 and "--val-fraction must be in [0, 1)" in err and not (tmp_path / "o2").exists()


def test_a_failure_while_writing_leaves_nothing(samples, tmp_path, monkeypatch):
    src = cv.write_via(samples, tmp_path / "via")
    calls = []
    def fail_on_val(images, *args):
        calls.append(len(images))
        if len(calls) == 2: raise OSError(28, "No space left on device")
        return real(images, *args)
    real = cv._coco_split
    monkeypatch.setattr(cv, "_coco_split", fail_on_val)
    with pytest.raises(OSError):
        cv.convert("via", src, tmp_path / "out", val_fraction=0.5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["via"]                # no OUT, no .partial folder


@pytest.mark.parametrize("fmt", sorted(WRITE))
def test_val_src_keeps_an_exports_own_validation_split(fmt, samples, tmp_path, capsys):
    """`--val-src`: the val split read from a second source of the same format, with the train split's class ids; a
    class only the val split has still gets one id in both."""
    no_hexagon = [dict(x, objects=[o for o in x["objects"] if o["name"] != "hexagon"]) for x in samples[1:]]
    assert any(o["name"] == "hexagon" for o in samples[0]["objects"]), "the val image must hold the class train lacks"
    train_src, val_src = WRITE[fmt](no_hexagon, tmp_path / "t"), WRITE[fmt](samples[:1], tmp_path / "v")
    status, out, err = _run(capsys, fmt, str(train_src), str(tmp_path / "out"), "--val-src", str(val_src))
    assert status == 0, err
    cats = {s: json.loads((tmp_path / "out" / "annotations" / f"instances_{s}.json").read_text())["categories"]
            for s in ("train", "val")}
    assert cats["train"] == cats["val"] and [c["name"] for c in cats["val"]] == sorted(cv.CUSTOM_CLASSES), cats
    assert "train: 3 images" in out and "val: 1 images" in out, out
    status, _, err = _run(capsys, fmt, str(train_src), str(tmp_path / "o2"), "--val-src", str(val_src),
                          "--val-fraction", "0.5")
    assert status == 2 and "give --val-src or --val-fraction, not both" in err and not (tmp_path / "o2").exists()
