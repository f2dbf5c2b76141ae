"""bf16 inference (`for_inference(amp='bf16')`, `--amp bf16`): the backbone and the heads' heavy layers in bfloat16,
the RoI kernels, box arithmetic and NMS in float32; the trained model's detections survive it. And the training
precision a config's amp="auto" settles on (bf16 on CPUs with AMX), kept on resume."""
import warnings

import pytest
import torch

from mrcnn_nb import core
from mrcnn_nb.bench import matched_detections
from mrcnn_nb.core import UserInputError
from mrcnn_nb.data import COCODataset
from mrcnn_nb.model import build_model, get_config
from mrcnn_nb.train import _autocast, demo_checkpoint, model_from_checkpoint, prepare_run, train


def _dtypes_seen(model, image) -> dict:
    "The dtype each watched module computes in (the output of its first convolution or linear layer), and the output."
    seen, hooks = {}, []
    def watch(m, name): return m.register_forward_hook(lambda mod, a, out: seen.setdefault(name, out.dtype) and None)
    watched = dict(backbone=model.backbone, rpn_head=model.rpn.head, box_pooler=model.box.pooler,
                   box_head=model.box.head, box_predictor=model.box.predictor, mask_head=model.mask.head,
                   mask_predictor=model.mask.predictor)
    for name, m in watched.items():
        for sub in m.modules():   # the dtype inside: the first convolution or linear layer of the module
            if isinstance(sub, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                hooks.append(watch(sub, name))
                break
        else:
            hooks.append(watch(m, name))
    with torch.no_grad(): out = model([image])[0]
    for h in hooks: h.remove()
    return seen, out


def test_bf16_inference_runs_the_heavy_layers_in_bf16_and_the_rest_in_float32(shapes_root):
    model, _, _ = model_from_checkpoint(demo_checkpoint())
    image = COCODataset(shapes_root, "val")[0][0]
    seen, out = _dtypes_seen(model.for_inference(amp="bf16"), image)
    heavy = {k: v for k, v in seen.items() if k != "box_pooler" and k != "box_predictor"}
    assert set(heavy.values()) == {torch.bfloat16}, seen
    assert seen["box_pooler"] == torch.float32 and seen["box_predictor"] == torch.float32, seen
    assert all(v.dtype in (torch.float32, torch.int64, torch.uint8, torch.bool) for v in out.values()), out
    seen32, _ = _dtypes_seen(model.for_inference(), image)
    assert set(seen32.values()) == {torch.float32}


def test_bf16_finds_the_float32_detections_of_the_trained_model(shapes_root):
    model, _, _ = model_from_checkpoint(demo_checkpoint())
    fp32, bf16 = model.for_inference(), model.for_inference(amp="bf16")
    val = COCODataset(shapes_root, "val")
    shares = []
    with torch.no_grad():
        for i in range(8):
            image = val[i][0]
            a, b = fp32([image])[0], bf16([image])[0]
            a, b = ({k: d[k][d["scores"] >= 0.5] for k in ("boxes", "labels")} for d in (a, b))   # what a user sees
            if len(a["boxes"]): shares.append(matched_detections(a, b))
    assert len(shares) >= 6 and sum(shares) / len(shares) >= 0.9, shares


@pytest.mark.parametrize("kernels", [False, True])
def test_bf16_on_a_cpu_without_bf16_kernels_warns_once_in_inference_and_training(monkeypatch, kernels):
    """Without torch's bf16 kernels every bf16 convolution is a reference loop: the user is told, by inference and by
    training, once per process however many steps run (training's autocast is entered by `prepare_run`'s check and by
    every step)."""
    monkeypatch.setattr(core, "cpu_bf16_kernels", lambda: kernels)
    model = build_model(get_config("TINY_FPN", num_classes=3))
    fast, plain, cfg = model.for_inference(amp="bf16"), model.for_inference(), get_config("TINY_FPN", amp="bf16")

    def inference():
        with torch.no_grad():
            for _ in range(2): fast([torch.rand(3, 64, 64)])
            plain([torch.rand(3, 64, 64)])   # float32: nothing to say

    def training():
        for _ in range(3):
            with _autocast(cfg, torch.device("cpu")): pass

    for run in (inference, training):
        monkeypatch.setattr(core, "_SLOW_AMP_WARNED", set())   # a fresh process
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run()
        slow = [w for w in seen if issubclass(w.category, core.SlowAmpWarning)]
        assert len(slow) == (0 if kernels else 1), (run.__name__, [str(w.message) for w in seen])
        assert all("amp='bf16' on this CPU" in str(w.message) and "leave amp off" in str(w.message) for w in slow)


@pytest.mark.parametrize("flags, expected", [(["avx512f", "avx512_bf16"], None), (["avx512f", "amx_bf16"], "bf16")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_amx_and_the_run_records_it(monkeypatch, tmp_path, shapes_root,
                                                                             flags, expected):
    """`amp='auto'` (TINY_FPN's) is settled once, as the run starts: bf16 where the CPU has AMX, float32 elsewhere (a
    CPU with AVX-512-BF16 but no AMX too) and on GPUs; the run's config, which its checkpoints and `metrics.json`
    keep, holds the precision it ran, and its steps run in it."""
    monkeypatch.setattr(core, "cpu_flags", lambda: flags)
    assert core.resolve_amp("auto", "cpu") == expected and core.resolve_amp("auto", "cuda") is None
    cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=1, warmup_iters=1)
    assert cfg.amp == "auto"
    run = prepare_run(cfg, shapes_root, out_dir=tmp_path, device="cpu")
    assert run.cfg.amp == expected
    with _autocast(run.cfg, run.device): product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if expected else torch.float32)


def test_auto_precision_resumes_in_the_checkpoint_precision(monkeypatch, tmp_path, shapes_root):
    """A run of amp='auto' resumed on a CPU where 'auto' means another precision (a preempted run restarted on
    another kind of machine) goes on in its checkpoint's precision; another one, named, needs --allow-changed amp."""
    cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=1, warmup_iters=1, checkpoint_period=1)
    monkeypatch.setattr(core, "cpu_flags", lambda: ["avx512f", "amx_bf16"])   # started on a CPU with AMX
    train(cfg, shapes_root, val_split=None, out_dir=tmp_path, progress=False, device="cpu")
    monkeypatch.setattr(core, "cpu_flags", lambda: ["avx512f"])                # resumed on one without
    longer = cfg.replace(max_iter=2)
    run = prepare_run(longer, shapes_root, val_split=None, out_dir=tmp_path, resume=True, device="cpu")
    assert (run.cfg.amp, run.start) == ("bf16", 1)
    with pytest.raises(UserInputError, match=r"'amp': \('bf16', None\).*--allow-changed amp"):
        prepare_run(longer.replace(amp=None), shapes_root, val_split=None, out_dir=tmp_path, resume=True, device="cpu")
    run = prepare_run(longer.replace(amp=None), shapes_root, val_split=None, out_dir=tmp_path, resume=True,
                      device="cpu", allow_changed=["amp"])
    assert (run.cfg.amp, run.start) == (None, 1)
