"""Bad input gets a clear error naming the file or annotation; the CLI exits with 2 and one line."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_coco
from mrcnn_nb.core import UserInputError
from mrcnn_nb.data import COCODataset

CATS = [dict(id=1, name="thing")]
IMG = dict(id=1, file_name="a.jpg", height=20, width=30)
ANN = dict(id=5, image_id=1, category_id=1, bbox=[1, 1, 5, 5], area=25, iscrowd=0, segmentation=[[1, 1, 6, 1, 6, 6, 1, 6]])


def test_missing_image_file(tmp_path):
    write_coco(tmp_path, "val", [IMG], [ANN], CATS, image_files=False)
    ds = COCODataset(tmp_path, "val")
    with pytest.raises(UserInputError, match=r"val/a.jpg: image file not found \(image id 1 of instances_val.json\)"):
        ds[0]


def test_truncated_and_unreadable_images(tmp_path):
    write_coco(tmp_path, "val", [IMG], [ANN], CATS)
    from PIL import Image
    import numpy as np
    path = tmp_path / "val" / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"a.jpg: unreadable or truncated image"):
        COCODataset(tmp_path, "val")[0]
    path.write_bytes(b"this is not an image")
    with pytest.raises(UserInputError, match=r"a.jpg: unreadable or truncated image"):
        COCODataset(tmp_path, "val")[0]
    path.write_bytes(b"")
    with pytest.raises(UserInputError, match=r"a.jpg: empty image file"):
        COCODataset(tmp_path, "val")[0]


def test_image_size_differs_from_annotation(tmp_path):
    write_coco(tmp_path, "val", [dict(IMG, height=21)], [ANN], CATS)
    (tmp_path / "val" / "a.jpg").rename(tmp_path / "val" / "tmp.png")
    from PIL import Image
    import numpy as np
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "val" / "a.jpg", format="PNG")
    with pytest.raises(UserInputError, match=r"a.jpg: image is 30x20 \(w x h\) but instances_val.json says 30x21"):
        COCODataset(tmp_path, "val")[0]


def test_malformed_json(tmp_path):
    path = write_coco(tmp_path, "val", [IMG], [ANN], CATS)
    path.write_text('{"images": [], "annotations": [,]}')
    with pytest.raises(UserInputError, match=r"instances_val.json: malformed JSON at line 1 column 32"):
        COCODataset(tmp_path, "val")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserInputError, match=r"instances_val.json: missing key\(s\) \['categories'\]"):
        COCODataset(tmp_path, "val")
    path.write_text(json.dumps(dict(images=[IMG], annotations=[dict(ANN, category_id=3)], categories=CATS)))
    with pytest.raises(UserInputError, match=r"annotation 5: category_id 3 is not in 'categories'"):
        COCODataset(tmp_path, "val")
    path.write_text(json.dumps(dict(images=[IMG], annotations=[dict(ANN, bbox=[1, 2])], categories=CATS)))
    with pytest.raises(UserInputError, match=r"annotation 5: bbox must be \[x, y, w, h\]"):
        COCODataset(tmp_path, "val")


def test_unknown_split_and_missing_root(tmp_path):
    write_coco(tmp_path, "val2017", [IMG], [ANN], CATS)
    with pytest.raises(UserInputError, match=r"unknown split 'train2017' \(splits with instances_\*.json under .*: \['val2017'\]\)"):
        COCODataset(tmp_path, "train2017")
    with pytest.raises(UserInputError, match=r"dataset root not found"):
        COCODataset(tmp_path / "nope", "val2017")
    with pytest.raises(UserInputError, match=r"unknown dataset kind 'panoptic'"):
        COCODataset(tmp_path, "val2017", kind="panoptic")


def test_polygon_with_fewer_than_three_points(tmp_path):
    write_coco(tmp_path, "val", [IMG], [dict(ANN, segmentation=[[1, 1, 6, 1, 6, 6, 1, 6], [1, 1, 2, 2]])], CATS)
    with pytest.raises(UserInputError, match=r"annotation 5: polygon 1 has 4 coordinates; .* at least 6 \(3 points\)"):
        COCODataset(tmp_path, "val")


def run_cli(*args):
    exe = shutil.which("mrcnn_nb", path=str(Path(sys.executable).parent)) or shutil.which("mrcnn_nb")
    assert exe, "the mrcnn_nb console script is not installed (pip install -e .)"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


@pytest.mark.parametrize("case", ["malformed", "missing_split", "missing_root", "bad_polygon", "bad_size", "unwritable_out"])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, case):
    path = write_coco(tmp_path, "val", [IMG], [ANN], CATS)
    if case == "malformed": path.write_text("{oops"); args = ["show", tmp_path, "--split", "val"]
    elif case == "missing_split": args = ["show", tmp_path, "--split", "test"]
    elif case == "missing_root": args = ["show", tmp_path / "nowhere"]
    elif case == "bad_polygon":
        path.write_text(json.dumps(dict(images=[IMG], annotations=[dict(ANN, segmentation=[[1, 1]])], categories=CATS)))
        args = ["show", tmp_path, "--split", "val", "--out", tmp_path / "x.png"]
    elif case == "bad_size": args = ["shapes", tmp_path / "out", "--size", "0x0"]
    else:  # a file where the output folder should be
        (tmp_path / "f").write_text(""); args = ["show", tmp_path, "--split", "val", "--out", tmp_path / "f" / "x.png"]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mrcnn_nb {args[0]}: error: "), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flag", ["--checkpoint", "--data"])
def test_bench_amp_refuses_a_missing_checkpoint_or_dataset_before_measuring(tmp_path, flag):
    "`bench amp --checkpoint/--data` naming nothing: exit 2, one line naming the flag and path, before any inference."
    (tmp_path / "model.pth").write_bytes(b"")   # exists: only the flag under test names nothing
    other = ["--data", tmp_path] if flag == "--checkpoint" else ["--checkpoint", tmp_path / "model.pth"]
    r = run_cli("bench", "amp", flag, tmp_path / "nowhere", *other, "--out", tmp_path / "amp.json")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"mrcnn_nb bench: error: {flag} {tmp_path / 'nowhere'}: no such " + (
        "file" if flag == "--checkpoint" else "folder"), r.stderr
    assert not (tmp_path / "amp.json").exists()


def test_bench_amp_refuses_data_without_a_checkpoint(tmp_path):
    r = run_cli("bench", "amp", "--data", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.strip() == "mrcnn_nb bench: error: --data scores the model of --checkpoint; give both"


@pytest.mark.parametrize("flag", ["--checkpoint", "--data"])
def test_amp_flags_are_refused_by_the_other_benchmarks(tmp_path, flag):
    r = run_cli("bench", "data", flag, tmp_path, "--n", 1)
    assert r.returncode == 2 and r.stderr.strip() == f"mrcnn_nb bench: error: {flag} is for bench amp only", r.stderr


def test_cli_missing_image_mid_show(tmp_path):
    write_coco(tmp_path, "val", [IMG], [ANN], CATS, image_files=False)
    r = run_cli("show", tmp_path, "--split", "val", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and "a.jpg: image file not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def _choice_fields():
    from dataclasses import fields
    from typing import get_args, get_type_hints
    from mrcnn_nb.model import Config
    hints = get_type_hints(Config)
    return [f.name for f in fields(Config) if "Literal" in str(hints[f.name])]


@pytest.mark.parametrize("pair", [f"{k}=bogus" for k in _choice_fields()] + ["base_lr=abc", "num_classes=1", "mask=maybe", "max_iter=-5"])
def test_every_bad_config_value_is_refused_before_any_data(tmp_path, monkeypatch, capsys, pair):
    "Each field with a fixed set of values (and a few typed ones): exit 2, one line naming key, value and choices; no dataset made."
    from mrcnn_nb.cli import main
    monkeypatch.setenv("MRCNN_NB_CACHE", str(tmp_path / "cache"))
    assert main(["train", pair, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key, value = pair.split("=")
    assert len(err) == 1 and err[0].startswith(f"mrcnn_nb train: error: config {key}=") and value in err[0] and "expected" in err[0], err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()   # refused before any data was made or read


@pytest.mark.parametrize("case", ["val_categories", "only_train", "train_without_annotations"])
def test_train_refuses_splits_it_cannot_use_before_building_a_model(tmp_path, case):
    """A validation split with other categories (its scores would read every label as another class), no validation
    split, a training split without annotations: exit 2 with one line saying what to do, before any output."""
    write_coco(tmp_path, "train", [IMG], [] if case == "train_without_annotations" else [ANN], CATS)
    if case != "only_train":
        write_coco(tmp_path, "val", [IMG], [ANN], [dict(id=1, name="other")] if case == "val_categories" else CATS)
    r = run_cli("train", "--data", tmp_path, "--iters", 1, "--out", tmp_path / "run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert {"val_categories": "{1: 'other'} but the training split", "only_train": "pass --val-split ''",
            "train_without_annotations": "nothing to train on"}[case] in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_annotations_without_iscrowd_and_area_evaluate(tmp_path):
    """Many exporters leave out `iscrowd` and `area`, which COCOeval reads: they are filled in as COCO defines them
    (0; the segmentation's pixels), so the ground truth itself, as detections, scores AP 1 for boxes and masks."""
    from mrcnn_nb.data import segmentation_to_rle
    from mrcnn_nb.evaluate import coco_evaluate
    bare = {k: v for k, v in ANN.items() if k not in ("iscrowd", "area")}
    box = dict(bare, id=6, bbox=[10, 10, 8, 6], segmentation=[[10, 10, 18, 10, 18, 16, 10, 16]])
    write_coco(tmp_path, "val", [IMG], [bare, box], CATS)
    ds = COCODataset(tmp_path, "val")
    truth = ds.coco.loadAnns(ds.coco.getAnnIds())
    assert [(a["iscrowd"], a["area"]) for a in truth] == [(0, 25.0), (0, 48.0)]
    def rle(a):
        r = segmentation_to_rle(a["segmentation"], IMG["height"], IMG["width"])
        return dict(r, counts=r["counts"].decode())
    results = {"bbox": [dict(image_id=1, category_id=1, bbox=a["bbox"], score=1.0) for a in truth],
               "segm": [dict(image_id=1, category_id=1, segmentation=rle(a), score=1.0) for a in truth]}
    m = coco_evaluate(ds.coco, results)
    assert m["bbox"]["stats"]["AP"] == 1.0 and m["segm"]["stats"]["AP"] == 1.0


@pytest.mark.parametrize("case", ["workers", "score_thresh", "allow_changed", "changeable_typo", "out_is_a_file",
                                  "config_case", "key_typo", "one_size"])
def test_arguments_refused_before_any_work(tmp_path, monkeypatch, capsys, case):
    """A negative worker count, a score outside [0, 1], --allow-changed without a resumed run or with a key that may not
    change, --out naming a file,
    a preset name in the wrong case, a mistyped key, one number where a tuple is due: exit 2 with one line saying
    what to give, before any data is made or read."""
    from mrcnn_nb.cli import main
    monkeypatch.setenv("MRCNN_NB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("")
    nowhere = ["--data", str(tmp_path / "nowhere")]   # were a check missing, train would stop at once, saying another thing
    args, said = {
        "workers": (["train", *nowhere, "--workers", "-1"], "--workers: expected 0 or a positive integer, got '-1'"),
        "score_thresh": (["predict", "x.png", "--checkpoint", "m.pth", "--score-thresh", "2"],
                         "--score-thresh: expected a score from 0 to 1, got '2'"),
        "allow_changed": (["train", *nowhere, "--allow-changed", "base_lr", "--out", str(tmp_path / "run")],
                          "--allow-changed only applies to a resumed run"),
        "out_is_a_file": (["train", *nowhere, "--out", str(tmp_path / "afile")], "afile: is a file; give a folder"),
        "config_case": (["train", *nowhere, "--config", "tiny_fpn"], "unknown config 'tiny_fpn' (did you mean 'TINY_FPN'?)"),
        "key_typo": (["train", *nowhere, "base_lrr=0.1"], "['base_lrr' (did you mean 'base_lr'?)]"),
        "changeable_typo": (["train", *nowhere, "--auto-resume", "--allow-changed", "base_lrr", "--out", str(tmp_path / "run")],
                            "--allow-changed base_lrr (did you mean 'base_lr'?): only base_lr, lr_steps"),
        "one_size": (["train", *nowhere, "min_size=128"], "config min_size=128: expected a tuple, e.g. (128,)"),
    }[case]
    with pytest.raises(SystemExit) if case in ("workers", "score_thresh") else contextlib.nullcontext() as exit_:
        code = main(args)
    code = exit_.value.code if case in ("workers", "score_thresh") else code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and said in err[-1], err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_eval_on_the_other_kind_says_what_the_checkpoint_reads(tmp_path, capsys):
    "`eval` of an instance checkpoint on a keypoint-only dataset: the error names the checkpoint's kind, not --kind."
    from mrcnn_nb.cli import main
    from mrcnn_nb.train import demo_checkpoint
    write_coco(tmp_path, "val", [IMG], [ANN], CATS)
    (tmp_path / "annotations" / "instances_val.json").rename(tmp_path / "annotations" / "person_keypoints_val.json")
    assert main(["eval", "--checkpoint", str(demo_checkpoint()), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--kind" not in err and "TINY_FPN, without a keypoint head, so it is evaluated on instances annotations" in err, err
