"""Issue 4: augmentation presets, pretrained weights, fine-tuning options, leakage warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF

from unseen import augment as A
from unseen.cli import main
from unseen.errors import UnseenError
from unseen.models import create_model
from unseen.pretrained import (
    PretrainedSource,
    adapt_input_channels,
    apply_pretrained,
    leakage_warning,
    load_weights_file,
    resolve_model_settings,
    resolve_pretrained,
    torchvision_weights_file,
)
from unseen.runfolder import load_torch
from unseen.train import TrainSettings, make_optimizer

# ----------------------------------------------------------------------------- augmentation


def _batch(c: int = 3, h: int = 12, b: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, h, generator=torch.Generator().manual_seed(seed))


def _run(preset: str, x: torch.Tensor, seed: int, flip_ok: bool = True) -> torch.Tensor:
    spec = A.make_augment_spec(preset, x.shape[-1], flip_ok)
    return spec(x.clone(), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["none", "standard", "strong"])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 12), (1, 28)])
def test_presets_keep_shape_dtype_and_range(preset, channels, size):
    x = _batch(channels, size)
    out = _run(preset, x, seed=1)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("preset", ["standard", "strong"])
def test_augmentation_is_seeded(preset):
    x = _batch()
    assert torch.equal(_run(preset, x, seed=3), _run(preset, x, seed=3))
    assert not torch.equal(_run(preset, x, seed=3), _run(preset, x, seed=4))


def test_none_is_identity_and_records_nothing_applied():
    x = _batch()
    assert torch.equal(_run("none", x, seed=0), x)
    spec = A.make_augment_spec("none", 28, flip_ok=True)
    assert spec.to_dict()["flip"] is False and spec.to_dict()["ops"] == ()


def test_strong_changes_most_images_but_not_shape():
    x = _batch(1, 28, b=64)
    out = _run("strong", x, seed=0, flip_ok=False)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-4
    assert out.shape == x.shape
    assert changed.float().mean() > 0.9
    spec = A.make_augment_spec("strong", 28, flip_ok=False).to_dict()
    assert spec["preset"] == "strong" and spec["erase_prob"] > 0 and "rotate" in spec["ops"]
    assert spec["magnitude_bins"] == 31


def test_flip_rule():
    # off where a mirror changes the meaning (digits), on elsewhere, and forced either way
    assert A.make_augment_spec("standard", 8, flip_ok=False).flip is False
    assert A.make_augment_spec("standard", 32, flip_ok=True).flip is True
    assert A.make_augment_spec("strong", 8, flip_ok=False, flip=True).flip is True
    assert A.make_augment_spec("standard", 32, flip_ok=True, flip=False).flip is False
    from unseen.data import load_dataset

    assert load_dataset("digits").flip_ok is False
    # with flips on and no padding each image comes out as itself or its mirror, both occurring
    x = _batch(1, 8, b=64)
    spec = A.AugmentSpec(preset="standard", padding=0, flip=True)
    out = spec(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()
    off = A.AugmentSpec(preset="standard", padding=0, flip=False)
    assert torch.equal(off(x, torch.Generator().manual_seed(0)), x)


def test_colour_operations_match_torchvision():
    u8 = torch.randint(
        0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x = u8.float() / 255
    factor = torch.tensor([0.2, 0.7, 1.3, 1.9])
    pairs = [
        (A.adjust_brightness, TF.adjust_brightness),
        (A.adjust_contrast, TF.adjust_contrast),
        (A.adjust_saturation, TF.adjust_saturation),
        (A.adjust_sharpness, TF.adjust_sharpness),
    ]
    for ours, theirs in pairs:
        ref = torch.stack([theirs(x[i], float(factor[i])) for i in range(4)])
        torch.testing.assert_close(ours(x, factor), ref, atol=2e-4, rtol=0)
    bits = torch.tensor([2.0, 4.0, 6.0, 8.0])
    ref = torch.stack([TF.posterize(u8[i], int(bits[i])) for i in range(4)]).float() / 255
    torch.testing.assert_close(A.posterize(x, bits), ref)
    thr = torch.tensor([0.1, 0.5, 0.9, 1.0])
    ref = torch.stack([TF.solarize(x[i], float(thr[i])) for i in range(4)])
    torch.testing.assert_close(A.solarize(x, thr), ref)
    torch.testing.assert_close(A.autocontrast(x), torch.stack([TF.autocontrast(i) for i in x]))
    low = u8 // 4 + 50  # a narrow histogram, so equalisation changes it
    ref = torch.stack([TF.equalize(i) for i in low]).float() / 255
    torch.testing.assert_close(A.equalize(low.float() / 255), ref)


def test_geometry_known_answers():
    x = _batch(1, 6, b=2)
    quarter = A.warp_affine(x, A.rotation_matrix(torch.tensor([90.0, 90.0])), torch.zeros(2, 2))
    torch.testing.assert_close(quarter, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # a shift of the sampling point by +1 px in x moves the image one pixel left, zero filled
    moved = A.warp_affine(x, torch.eye(2).expand(2, 2, 2), torch.tensor([[1.0, 0.0]] * 2))
    expected = torch.zeros_like(x)
    expected[..., :-1] = x[..., 1:]
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)


def test_trivial_augment_applies_one_operation_per_image():
    x = _batch(1, 8, b=48)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(A.trivial_augment(x, ("identity",), 31, g), x)
    out = A.trivial_augment(x, ("identity", "posterize"), 31, g)
    kept = 0
    for i in range(len(x)):  # each image is itself or itself posterised to some 2..8 bits
        options = [x[i]] + [A.posterize(x[i : i + 1], torch.tensor([b]))[0] for b in range(2, 9)]
        assert any(torch.allclose(out[i], o) for o in options)
        kept += torch.equal(out[i], x[i])
    assert 0 < kept < len(x)


def test_subset_and_whole_batch_paths_agree():
    # the CPU path (ops on the images that drew them) and the CUDA path (torch.where) agree
    x = _batch(3, 16, b=64)
    a = A.trivial_augment(x, A.STRONG_OPS, 31, torch.Generator().manual_seed(5), subset=True)
    b = A.trivial_augment(x, A.STRONG_OPS, 31, torch.Generator().manual_seed(5), subset=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(a, x)


def test_random_erasing_boxes():
    x = torch.full((40, 1, 20, 20), 2.0)  # outside [0, 1], so every erased pixel shows
    out = A.random_erasing(x, 1.0, torch.Generator().manual_seed(0), scale=(0.05, 0.2))
    for img in out[:, 0]:
        erased = img < 1.5
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(erased.sum()) == int(box)  # one rectangle
        assert 0.02 <= int(erased.sum()) / 400 <= 0.3
    assert torch.equal(A.random_erasing(x, 0.0, torch.Generator()), x)


# ----------------------------------------------------------------------------- pretrained weights


def _imagenet_like_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


def _source(state, kind="file", **meta) -> PretrainedSource:
    return PretrainedSource("x", kind, Path("x.pt"), state, f"{kind}: x.pt", meta)


def test_head_is_replaced_and_backbone_loaded():
    state = _imagenet_like_state()
    model = create_model("resnet18", 3, 4, 32, stem="imagenet")
    report = apply_pretrained(model, _source(state))
    assert model.head.weight.shape == (4, 512)
    assert torch.equal(model.backbone.net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.backbone.net.bn1.running_var, state["bn1.running_var"])
    assert [h.split()[0] for h in report.head_replaced] == ["fc.weight", "fc.bias"]
    assert report.new_head == "512 -> 4 classes"
    assert report.mismatched == report.missing == report.unexpected == []
    assert len(report.loaded) == len(state) - 2


def test_channel_adaptation_hand_checked():
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1)
    assert adapt_input_channels(w, 1).flatten().tolist() == [6.0, 15.0]
    one = torch.tensor([3.0, 6.0]).reshape(2, 1, 1, 1)
    assert adapt_input_channels(one, 3).reshape(2, 3).tolist() == [[1.0] * 3, [2.0] * 3]
    # in a model: a grey image through the summed conv == the same image repeated in RGB
    state = _imagenet_like_state()
    model = create_model("resnet18", 1, 5, 32, stem="imagenet")
    report = apply_pretrained(model, _source(state))
    assert report.adapted and "3 -> 1" in report.adapted[0]
    grey = torch.rand(2, 1, 16, 16)
    ours = F.conv2d(grey, model.backbone.net.conv1.weight, stride=2, padding=3)
    theirs = F.conv2d(grey.repeat(1, 3, 1, 1), state["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_small_stem_skips_the_7x7_conv_and_lists_it():
    state = _imagenet_like_state()
    model = create_model("resnet18", 3, 4, 32, stem="small")
    fresh = model.backbone.net.conv1.weight.clone()
    report = apply_pretrained(model, _source(state))
    assert len(report.mismatched) == 1 and report.mismatched[0].startswith(
        "backbone.net.conv1.weight: (64, 3, 7, 7) -> (64, 3, 3, 3)"
    )
    assert torch.equal(model.backbone.net.conv1.weight, fresh)
    assert "backbone.net.conv1.weight" in report.missing
    assert torch.equal(model.backbone.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_weights_that_fit_nothing_are_an_error():
    model = create_model("resnet20", 1, 3, 8)
    with pytest.raises(UnseenError, match="fit this network"):
        apply_pretrained(model, _source(_imagenet_like_state()))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(UnseenError, match="weights-only"):
        load_weights_file(path)
    assert not marker.exists()


def test_pt_safetensors_and_module_prefix(tmp_path):
    state = _imagenet_like_state()
    pt = tmp_path / "w.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, pt)
    src = load_weights_file(pt)
    assert (
        src.kind == "file" and src.description == f"file: {pt}" and "conv1.weight" in src.state_dict
    )
    safetensors = pytest.importorskip("safetensors.torch")
    st = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    model = create_model("resnet18", 3, 2, 64, stem="imagenet")
    report = apply_pretrained(model, load_weights_file(st))
    assert torch.equal(model.backbone.net.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert not report.mismatched
    # saved from nn.DataParallel: the prefix is dropped from safetensors files too
    st_module = tmp_path / "module.safetensors"
    safetensors.save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(st_module))
    assert "conv1.weight" in load_weights_file(st_module).state_dict
    ensemble = tmp_path / "ensemble.safetensors"
    safetensors.save_file({"members.0.head.weight": torch.zeros(1, 4)}, str(ensemble))
    with pytest.raises(UnseenError, match="is an ovr-separate ensemble"):
        load_weights_file(ensemble)


def test_the_weights_address_is_torchvision_s():
    from torchvision.models import ResNet18_Weights

    from unseen.pretrained import TORCHVISION_WEIGHTS_URL

    assert ResNet18_Weights.IMAGENET1K_V1.url == TORCHVISION_WEIGHTS_URL


def test_torchvision_weights_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, url = torchvision_weights_file()
    assert path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    rc = main(["run", "--model", "resnet18", "--pretrained", "torchvision", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert path.name in err and str(path.parent) in err and "--download" in err
    # with the file in the cache it loads (here random weights saved under the same name)
    path.parent.mkdir(parents=True)
    torch.save(_imagenet_like_state(), path)
    src = resolve_pretrained("torchvision")
    assert src.kind == "torchvision" and src.description.startswith("imagenet-1k")
    # ImageNet stem chosen and 8 px images up-sampled 4x; explicit choices are kept
    assert resolve_model_settings("resnet18", "auto", None, src, 8) == {
        "stem": "imagenet",
        "input_size": 32,
    }
    assert resolve_model_settings("resnet18", "small", 40, src, 8) == {}


def test_freeze_backbone_trains_only_the_head():
    from unseen.heads import HEADS
    from unseen.train import train_model

    torch.manual_seed(0)
    model = create_model("resnet20", 1, 3, 8)
    model.freeze_backbone()
    model.train()
    assert model.training and not model.backbone.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 3
    spec = A.make_augment_spec("standard", 8, flip_ok=False)
    train_model(model, x, y, TrainSettings(epochs=1, batch_size=16), HEADS["softmax"], spec,
                torch.device("cpu"), progress=False)  # fmt: skip
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # incl. BN running stats
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_optimizer_groups():
    model = create_model("resnet20", 1, 3, 8)
    opt = make_optimizer(model, TrainSettings(epochs=1, lr=0.2, backbone_lr_scale=0.1))
    head_ids = {id(p) for p in model.head.parameters()}
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.02])
    assert {id(p) for p in opt.param_groups[0]["params"]} == head_ids
    assert len(opt.param_groups[1]["params"]) == len(list(model.backbone.parameters()))
    model.freeze_backbone()
    opt = make_optimizer(model, TrainSettings(epochs=1, lr=0.2))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == head_ids


def test_input_size_resizes_inside_the_model():
    model = create_model("resnet20", 1, 3, 8, input_size=16).eval()
    x = torch.rand(2, 1, 8, 8)
    up = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    expected = model.backbone((up - model.mean) / model.std)
    torch.testing.assert_close(model.forward_features(x), expected)


def test_leakage_warnings():
    state = {"w": torch.zeros(1)}
    tv = PretrainedSource("torchvision", "torchvision", None, state, "imagenet-1k")
    assert "ImageNet" in leakage_warning(tv, "fashion-mnist", ["Ankle boot"])
    run = _source(
        state, "run", config={"dataset": "digits"}, split={"known_names": ["0", "1", "9"]}
    )
    warning = leakage_warning(run, "digits", ["8", "9"])
    assert "digits class 9, which this run holds out" in warning
    assert leakage_warning(run, "digits", ["7"]) is None
    assert "check" in leakage_warning(run, "fashion-mnist", ["Ankle boot"])
    assert "unknown origin" in leakage_warning(_source(state), "digits", ["9"])


def test_leakage_is_found_through_a_chain_of_runs():
    # weights reach this run through an intermediate run: what any earlier step trained on
    # counts, as model.pt's lineage records it
    state = {"w": torch.zeros(1)}
    base = {"kind": "run", "run": "runs/first", "dataset": "digits",
            "known": [str(c) for c in range(9)]}  # fmt: skip
    mid = _source(state, "run", config={"dataset": "digits"},
                  split={"known_names": [str(c) for c in range(8)]}, lineage=[base])  # fmt: skip
    warning = leakage_warning(mid, "digits", ["8", "9"])
    assert "runs/first trained on digits class 8" in warning
    assert "(reached this run through " in warning  # the direct source, named by its folder
    assert leakage_warning(mid, "digits", ["9"]) is None  # nobody trained on 9
    imagenet = _source(state, "run", config={"dataset": "digits"},
                       split={"known_names": ["0", "1"]}, lineage=[{"kind": "torchvision"}])  # fmt: skip
    assert "ImageNet-1k" in leakage_warning(imagenet, "digits", ["9"])
    # a run from a version without lineage: its config's --pretrained is all there is
    old = _source(state, "run", config={"dataset": "digits", "pretrained": "w.pt"},
                  split={"known_names": ["0", "1"]})  # fmt: skip
    assert "w.pt of unknown origin" in leakage_warning(old, "digits", ["9"])
    old_tv = _source(state, "run", config={"dataset": "digits", "pretrained": "torchvision"},
                     split={"known_names": ["0", "1"]})  # fmt: skip
    assert "ImageNet-1k" in leakage_warning(old_tv, "digits", ["9"])


def test_a_source_run_that_recorded_a_relative_dataset_path_is_the_same_dataset(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    state = {"w": torch.zeros(1)}
    old = _source(state, "run", config={"dataset": "npz:d.npz"},
                  split={"known_names": [str(c) for c in range(9)]})  # fmt: skip
    warning = leakage_warning(old, f"npz:{tmp_path / 'd.npz'}", ["3"])
    assert "class 3, which this run holds out" in warning


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pretrain_then_fine_tune_via_cli(tmp_path, capsys):
    common = ["--device", "cpu", "--precision", "fp32", "--no-report", "--quiet",
              "--train-subset", "300", "--test-subset", "200", "--epochs", "2"]  # fmt: skip
    pre = tmp_path / "pre"
    assert main(["run", "--out", str(pre), "--holdout", "8,9", *common]) == 0
    ft = tmp_path / "ft"
    rc = main(["run", "--out", str(ft), "--holdout", "9", "--pretrained", str(pre),
               "--freeze-backbone", "--augment", "strong", *common])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["pretrained_on"].startswith(f"run: {pre} (dataset digits, known classes 0, 1")
    assert metrics["pretrained_warning"] is None  # 9 was held out of pretraining too
    # a third run holding 8 out, started from ft, which trained on 8: warned; and ft's
    # model.pt records what its own starting weights (pre) were trained on
    third = tmp_path / "third"
    assert main(["run", "--out", str(third), "--holdout", "8,9", "--pretrained", str(ft),
                 *common]) == 0  # fmt: skip
    warning = json.loads((third / "metrics.json").read_text())["pretrained_warning"]
    assert f"the pretrained run {ft} trained on digits class 8" in warning
    lineage = torch.load(ft / "model.pt", weights_only=True)["lineage"]
    assert lineage[0]["run"] == str(pre) and lineage[0]["known"][:2] == ["0", "1"]
    assert metrics["pretrained_weights"]["head_replaced"] == [
        "head.weight (8, 64)",
        "head.bias (8,)",
    ]
    assert "started from pretrained weights: run:" in out
    config = json.loads((ft / "config.json").read_text())
    assert config["augmentation"]["preset"] == "strong" and config["augmentation"]["flip"] is False
    before, after = load_torch(pre / "model.pt"), load_torch(ft / "model.pt")
    assert after["state_dict"]["head.weight"].shape == (9, 64)
    # frozen backbone: the fine-tuned network carries the pretrained backbone unchanged
    for key, value in before["state_dict"].items():
        if key.startswith("backbone."):
            assert torch.equal(after["state_dict"][key], value), key
    # fine-tuning with 8 held out warns that the pretrained run trained on class 8
    rc = main(["run", "--out", str(tmp_path / "leak"), "--holdout", "7,8,9", "--epochs", "1",
               "--pretrained", str(pre / "model.pt"), *common[:-2]])  # fmt: skip
    assert rc == 0
    warning = json.loads((tmp_path / "leak" / "metrics.json").read_text())["pretrained_warning"]
    assert "trained on digits class 7, which this run holds out" in warning


def test_backbone_options_without_pretrained_weights_are_noted(tmp_path, capsys):
    common = ["--device", "cpu", "--no-report", "--train-subset", "200", "--test-subset", "100",
              "--epochs", "1"]  # fmt: skip
    assert main(["run", "--out", str(tmp_path / "a"), "--freeze-backbone", *common]) == 0
    said = capsys.readouterr().out
    assert "note: --freeze-backbone without --pretrained trains a head on random features" in said
    assert main(["run", "--out", str(tmp_path / "b"), "--backbone-lr-scale", "0.1", *common]) == 0
    said = capsys.readouterr().out
    assert "note: --backbone-lr-scale 0.1 without --pretrained trains the randomly" in said
    assert main(["run", "--out", str(tmp_path / "c"), *common]) == 0
    assert "note:" not in capsys.readouterr().out


def test_freezing_a_backbone_the_weights_do_not_fully_fit_is_refused():
    from unseen.errors import ConfigError
    from unseen.experiment import refuse_frozen_fresh_weights

    state = _imagenet_like_state()
    small = create_model("resnet18", 3, 4, 32, stem="small")  # the 7x7 conv does not fit
    with pytest.raises(ConfigError, match=r"keep 1 backbone weights .* \(backbone\.net\.conv1"):
        refuse_frozen_fresh_weights(small, apply_pretrained(small, _source(state)))
    same = create_model("resnet18", 3, 4, 32, stem="imagenet")  # everything fits: a probe is fine
    refuse_frozen_fresh_weights(same, apply_pretrained(same, _source(state)))
    # parameters only: frozen batch norms would keep mean 0 and variance 1
    params_only = {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}
    net = create_model("resnet18", 3, 4, 32, stem="imagenet")
    with pytest.raises(ConfigError, match=r"backbone weights .*running_(mean|var)"):
        refuse_frozen_fresh_weights(net, apply_pretrained(net, _source(params_only)))


def test_multi_head_and_ensemble_run_folders_get_their_own_error(tmp_path):
    multi = tmp_path / "multi"
    for head in ("ovr", "softmax"):
        (multi / head).mkdir(parents=True)
        torch.save({"state_dict": {"w": torch.zeros(2, 2)}}, multi / head / "model.pt")
    with pytest.raises(UnseenError, match=r"holds one model per head \(ovr, softmax\); give one"):
        load_weights_file(multi)
    ensemble = tmp_path / "ens.pt"
    torch.save({"state_dict": {"members.0.head.weight": torch.zeros(1, 4)}}, ensemble)
    with pytest.raises(UnseenError, match="ovr-separate ensemble"):
        load_weights_file(ensemble)
