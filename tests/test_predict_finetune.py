"""Users' own data, the two ends: `mrcnn_nb predict` on folders (any image mode, EXIF rotation) with one COCO results
file that COCOeval scores as `mrcnn_nb eval` does; fine-tuning schedules (--epochs, --freeze-trunk, --heads-iters),
with a heads-first run resumed across its phase boundary bitwise equal to an uninterrupted one."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_nb.cli import main
from mrcnn_nb.model import get_config
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import demo_checkpoint, iters_for_epochs, load_checkpoint, part_of, train

DEMO = str(demo_checkpoint())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    "The images the demo model knows: 6 training, 8 validation (as in the notebooks)."
    torch.set_num_threads(1)
    return make_shapes(tmp_path_factory.mktemp("s") / "s", n_train=6, n_val=8, size=128, seed=1, progress=False)


def _run(*argv) -> tuple:
    "`(status, stdout, stderr)` of the `mrcnn_nb` command line `argv`, run in this process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _refused(argv, says: str):
    "The command line is refused: status 2, one line on stderr that says `says`, no traceback."
    status, _, err = _run(*argv)
    lines = [l for l in err.splitlines() if l.startswith("mrcnn_nb")]
    assert status == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, (status, err)


# ---------------------------------------------------------------------------------------------------- predict


def _odd_images(src: Path, folder: Path) -> dict:
    """A folder of one validation image in four guises: grey (L), RGBA, 16-bit grey (I;16), and a 128x96 crop stored
    as a 96x128 JPEG with EXIF orientation 6 (a viewer rotates it back); returns the displayed size of each."""
    folder.mkdir()
    im = Image.open(src).convert("RGB")
    im.convert("L").save(folder / "grey.png")
    rgba = im.convert("RGBA"); rgba.putalpha(200); rgba.save(folder / "alpha.png")
    wide = (np.asarray(im.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(wide).save(folder / "sixteen.png")          # Pillow writes and reads it as I;16
    assert Image.open(folder / "sixteen.png").mode in ("I;16", "I")
    upright = im.crop((0, 16, 128, 112))                          # 128 wide, 96 high as displayed
    exif = Image.Exif(); exif[0x0112] = 6                         # "rotate 90 clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.JPG", quality=95, exif=exif)
    stored = Image.open(folder / "rotated.JPG")
    assert stored.size == (96, 128)
    # its decoded pixels, turned upright by hand
    stored.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(folder.parent / "upright.png")
    return {"grey.png": (128, 128), "alpha.png": (128, 128), "sixteen.png": (128, 128), "rotated.JPG": (128, 96)}



def test_folder_of_odd_image_modes_predicts_in_the_displayed_frame(shapes, tmp_path):
    sizes = _odd_images(shapes / "val" / "000000000002.png", tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not an image")   # not an image extension: left out
    status, out, _ = _run("predict", "--checkpoint", DEMO, tmp_path / "in", "--out", tmp_path / "out", "--quiet")
    assert status == 0 and out.startswith("4 images,")
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [im["file_name"] for im in images] == ["alpha.png", "grey.png", "rotated.JPG", "sixteen.png"]   # sorted
    assert [im["id"] for im in images] == [1, 2, 3, 4]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for im in images:
        w, h = sizes[im["file_name"]]
        assert (im["width"], im["height"]) == (w, h), im
        dets = [r for r in results if r["image_id"] == im["id"]]
        assert dets, f"{im['file_name']}: nothing detected"
        for r in dets:
            x, y, bw, bh = r["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3, (im["file_name"], r["bbox"])
            assert r["segmentation"]["size"] == [h, w] and isinstance(r["segmentation"]["counts"], str)
            assert r["score"] > 0.5 and 1 <= r["category_id"] <= 7 and "keypoints" not in r
        assert (tmp_path / "out" / f"{im['file_name']}.pred.png").exists()
        assert (tmp_path / "out" / f"{im['file_name']}.pred.json").exists()
    # the rotated JPEG's detections are those of its decoded pixels turned upright by hand (saved losslessly)
    status, _, _ = _run("predict", "--checkpoint", DEMO, tmp_path / "upright.png", "--out", tmp_path / "up", "--quiet")
    upright = json.loads((tmp_path / "up" / "results.json").read_text())
    rotated = [dict(r, image_id=1) for r in results if r["image_id"] == 3]
    assert status == 0 and upright == rotated


def test_results_json_scored_by_cocoeval_equals_mrcnn_nb_eval(shapes, tmp_path):
    """Predicting with --coco and --score-thresh 0 (the model's own threshold, as eval uses) on the validation folder,
    then COCOeval on results.json, gives eval's AP. Both run the same model on the same decoded images one at a time
    (eval --batch 1: no padding to a common size), and JSON keeps Python floats exactly, so the detections are the
    same numbers: the APs agree to float rounding (1e-9), not just approximately. (results.json carries box and mask
    together, so COCOeval takes every result's area from its box; that moves APs/APm/APl, never AP, AP50, AP75.)"""
    ann = shapes / "annotations" / "instances_val.json"
    status, _, _ = _run("predict", "--checkpoint", DEMO, shapes / "val", "--coco", ann, "--score-thresh", "0",
                        "--out", tmp_path / "pred", "--quiet")
    assert status == 0
    status, _, _ = _run("eval", "--checkpoint", DEMO, "--data", shapes, "--split", "val", "--batch", "1",
                        "--out", tmp_path / "ev")
    assert status == 0
    expected = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        dt = gt.loadRes(str(tmp_path / "pred" / "results.json"))
        for iou_type in ("bbox", "segm"):
            E = COCOeval(gt, dt, iou_type); E.evaluate(); E.accumulate(); E.summarize()
            got = dict(zip(["AP", "AP50", "AP75"], E.stats[:3]))
            for k, v in got.items():
                assert abs(v - expected[iou_type][k]) < 1e-9, (iou_type, k, v, expected[iou_type][k])
    assert expected["segm"]["AP"] > 0.3
    ids = {im["file_name"]: im["id"] for im in json.loads(ann.read_text())["images"]}
    assert {im["file_name"]: im["id"] for im in json.loads((tmp_path / "pred" / "images.json").read_text())} == ids


def test_predict_refusals_and_category_ids(shapes, tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(["predict", "--checkpoint", DEMO, tmp_path / "empty"], "no image files")
    (tmp_path / "in").mkdir()
    shutil.copy(shapes / "val" / "000000000001.png", tmp_path / "in" / "a.png")
    (tmp_path / "in" / "results.json").write_text("[]")
    _refused(["predict", "--checkpoint", DEMO, tmp_path / "in" / "a.png", tmp_path / "in" / "results.json",
              "--out", tmp_path / "in"], "results.json is one of the inputs")
    assert (tmp_path / "in" / "results.json").read_text() == "[]"
    ann = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    _refused(["predict", "--checkpoint", DEMO, tmp_path / "in" / "a.png", "--coco",
              shapes / "annotations" / "instances_train.json"], "a.png: no image of that file name")
    # categories by name: the file's ids, whatever they are
    ann["categories"] = [dict(c, id=100 + c["id"]) for c in ann["categories"]]
    for a in ann["annotations"]: a["category_id"] += 100
    ann["images"] = [dict(im, file_name="a.png") if im["file_name"].endswith("000000000001.png") else im
                     for im in ann["images"]]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    status, _, _ = _run("predict", "--checkpoint", DEMO, tmp_path / "in" / "a.png", "--coco", tmp_path / "ann.json",
                        "--out", tmp_path / "out", "--quiet")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert status == 0 and res and all(r["category_id"] > 100 for r in res)
    ann["categories"][0]["name"] = "blob"
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    _refused(["predict", "--checkpoint", DEMO, tmp_path / "in" / "a.png", "--coco", tmp_path / "ann.json",
              "--out", tmp_path / "out"], "no category named 'circle'")


# ---------------------------------------------------------------------------------------------------- fine-tuning


def test_epochs_arithmetic_and_the_cli_run_length(shapes, tmp_path):
    assert [iters_for_epochs(*a) for a in [(1, 6, 2), (0.5, 6, 2), (1.1, 50, 1), (2.5, 7, 3), (1e-6, 5, 4)]] == \
        [3, 2, 55, 6, 1]   # 1.1 * 50 = 55.00000000000001 in floating point
    status, out, _ = _run("train", "--data", shapes, "--val-split", "", "--out", tmp_path / "e", "--epochs", "1.5",
                          "--batch", "2", "warmup_iters=1")
    ck = load_checkpoint(tmp_path / "e" / "last.pth")
    assert status == 0 and ck["iteration"] == 5 and ck["config"]["max_iter"] == 5   # ceil(1.5 * 6 / 2)
    assert "1.5 epochs of 6 images, 2 per iteration: 5 iterations" in out
    assert tuple(ck["config"]["lr_steps"]) == (4,)   # TINY_FPN's step at 2400 of 3000, moved to 80 % of 5 (scaled_schedule)
    _refused(["train", "--data", shapes, "--out", tmp_path / "x", "--epochs", "1", "--iters", "3"], "without --iters")
    _refused(["train", "--data", shapes, "--out", tmp_path / "x", "--epochs", "1", "max_iter=3"], "(or max_iter=)")
    _refused(["train", "--data", shapes, "--out", tmp_path / "x", "--freeze-trunk", "trainable_layers=3"],
             "one or the other")


def _parts(sd: dict, parts) -> dict:
    return {k: v.float() for k, v in sd.items() if part_of(k) in parts}


def test_freeze_trunk_leaves_every_trunk_tensor_bitwise_unchanged(shapes, tmp_path):
    status, out, _ = _run("train", "--data", shapes, "--val-split", "", "--out", tmp_path / "f", "--iters", "2",
                          "--batch", "2", "--weights", DEMO, "--freeze-trunk", "warmup_iters=1")
    assert status == 0 and "(frozen: trunk)" in out and "trainable: " in out
    start, end = load_checkpoint(DEMO)["model"], load_checkpoint(tmp_path / "f" / "model_final.pth")["model"]
    trunk = _parts(start, ["trunk"])
    assert len(trunk) > 20 and all(torch.equal(v, end[k]) for k, v in trunk.items())
    for part in ("fpn", "rpn", "box", "mask"):
        assert any(not torch.equal(v, end[k]) for k, v in _parts(start, [part]).items()), f"{part} did not train"


def test_heads_first_phase_and_resume_across_the_boundary_is_bitwise(shapes, tmp_path):
    """A 5-iteration run, its first 2 iterations on the heads alone: the trunk and FPN stay bitwise as loaded through
    phase 1 and move after it; runs stopped at iteration 1 (phase 1), 2 (the boundary) and 3 (phase 2) and resumed
    end with the uninterrupted run's weights, bitwise."""
    cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=5, warmup_iters=1, checkpoint_period=100)
    go = lambda out, n, **kw: train(cfg.replace(max_iter=n), shapes, val_split=None, out_dir=tmp_path / out,
                                    progress=False, heads_iters=kw.pop("heads_iters", 2), **kw)
    straight = go("straight", 5, weights=DEMO)["model"].state_dict()
    start = load_checkpoint(DEMO)["model"]
    backbone, heads = _parts(start, ["trunk", "fpn"]), _parts(start, ["rpn", "box", "mask"])
    for stop in (1, 2, 3):
        go(f"stop{stop}", stop, weights=DEMO)
        ck = load_checkpoint(tmp_path / f"stop{stop}" / "last.pth")
        assert ck["iteration"] == stop and ck["heads_iters"] == 2
        same = all(torch.equal(v, ck["model"][k]) for k, v in backbone.items())
        assert same == (stop <= 2), f"trunk+FPN after iteration {stop}: unchanged={same}"
        assert any(not torch.equal(v, ck["model"][k]) for k, v in heads.items())
        resumed = go(f"stop{stop}", 5, resume=True, heads_iters=None)["model"].state_dict()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), f"resumed at {stop}: weights differ"
    with pytest.raises(Exception, match="trained with --heads-iters 2, not 3"):
        go("stop1", 6, resume=True, heads_iters=3)
    _refused(["train", "--data", shapes, "--val-split", "", "--out", tmp_path / "stop1", "--resume", "--iters", "6",
              "--batch", "2", "warmup_iters=1", "checkpoint_period=100", "--heads-iters", "3"], "not 3")


def test_heads_first_run_resumed_in_a_fresh_process_is_bitwise(shapes, tmp_path):
    """Stopped at iteration 1 (phase 1) and resumed by `mrcnn_nb train --resume` in a new process: the straight run's
    weights."""
    args = ["--data", shapes, "--val-split", "", "--batch", "2", "warmup_iters=1", "checkpoint_period=100"]
    first = ["--weights", DEMO, "--heads-iters", "2"]   # the resumed run takes --heads-iters from the checkpoint
    assert _run("train", "--out", tmp_path / "straight", "--iters", "3", *args, *first)[0] == 0
    assert _run("train", "--out", tmp_path / "split", "--iters", "1", *args, *first)[0] == 0
    code = "import sys; from mrcnn_nb.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, "train", "--out", str(tmp_path / "split"), "--iters", "3",
                        "--resume", *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (load_checkpoint(tmp_path / d / "model_final.pth")["model"] for d in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed in a new process: weights differ"
