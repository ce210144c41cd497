"""`unseen ood`: another dataset's test images scored as unseen by a finished run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from unseen import RunConfig
from unseen.cli import main
from unseen.experiment import prepare
from unseen.farood import evaluate_ood, ood_path

#: conftest's digits_run configuration (a finished default-split digits run, 9 held out)
QUICK = dict(epochs=8, device="cpu", precision="fp32")


def save_npz_dataset(path, x_test: np.ndarray) -> str:
    """An ``npz:PATH`` dataset whose test split is ``x_test`` (N x C x H x W uint8)."""
    np.savez(path, x_train=x_test[:2], y_train=np.zeros(2, int), x_test=x_test,
             y_test=np.zeros(len(x_test), int), classes=np.array(["other"]))  # fmt: skip
    return f"npz:{path}"


def test_the_run_s_own_unseen_images_give_the_run_s_own_metrics(digits_run, tmp_path):
    # a known answer: scored as another dataset, the held-out 9s of the run's test set must
    # give what the run measured for them (the same images, scores and thresholds)
    sd = prepare(RunConfig(out=str(digits_run), **QUICK)).split_data
    nines = sd.x_test[sd.test_is_unseen].numpy()
    result = evaluate_ood(digits_run, save_npz_dataset(tmp_path / "nines.npz", nines))
    run = json.loads((digits_run / "metrics.json").read_text())["scores"]
    assert result["num_images"] == len(nines) == 54 and result["converted"] is None
    assert result["num_known_test"] == int((~sd.test_is_unseen).sum())
    assert set(result["scores"]) == set(run)
    for name, m in result["scores"].items():
        for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "oscr", "threshold",
                    "unseen_rejected", "known_rejected", "open_set_accuracy"):  # fmt: skip
            assert m[key] == pytest.approx(run[name][key], abs=1e-9), (name, key)
    labelled = json.loads((digits_run / "metrics.json").read_text())["unseen_predicted_as"]
    assert result["predicted_as"] == labelled


def test_the_run_s_known_images_are_not_told_apart(digits_run, tmp_path):
    # the other known answer: the known test images themselves, scored as unseen, are
    # ranked like the known ones: every AUROC is a half
    sd = prepare(RunConfig(out=str(digits_run), **QUICK)).split_data
    known = sd.x_test[~sd.test_is_unseen].numpy()
    result = evaluate_ood(digits_run, save_npz_dataset(tmp_path / "known.npz", known))
    for name, m in result["scores"].items():
        assert m["auroc"] == pytest.approx(0.5, abs=1e-9), name


def test_the_run_s_report_shows_each_dataset_scored(digits_run, tmp_path, capsys):
    from unseen.report import build_report

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    rng = np.random.default_rng(1)
    name = save_npz_dataset(
        tmp_path / "noise.npz", rng.integers(0, 256, (10, 1, 8, 8)).astype(np.uint8)
    )
    assert main(["ood", str(run), "--dataset", name]) == 0
    assert f"`unseen report {run}` adds it" in capsys.readouterr().out
    build_report(run, tsne=False)
    md = (run / "report.md").read_text()
    assert f"## Another dataset as unseen: {name}" in md
    assert "10 test images of" in md and "against the run's 486 known test images" in md
    assert md.index("Another dataset as unseen") < md.index("## Figures")
    assert f"Another dataset as unseen: {name}" in (run / "report.html").read_text()


def test_unseen_ood_prints_saves_and_converts_another_kind_of_image(digits_run, tmp_path, capsys):
    run = tmp_path / "run"  # a copy: the shared run folder stays as the run left it
    shutil.copytree(digits_run, run)
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (30, 3, 16, 12), dtype=np.uint8)  # 16 high, 12 wide, RGB
    name = save_npz_dataset(tmp_path / "colour.npz", colour)
    assert main(["ood", str(run), "--dataset", name, "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 test images from" in out and "resized from 16 x 12; colour to greyscale" in out
    assert "against the run's 486 known test images" in out and "\nscore " in out
    saved = json.loads(ood_path(run, name).read_text())
    assert saved["num_images"] == 20 and saved["dataset"] == name
    assert set(saved["scores"]["msp"]) >= {"auroc", "fpr_at_95_tpr", "unseen_rejected"}
    assert sum(saved["predicted_as"].values()) == 20


@pytest.mark.parametrize(
    "args, said",
    [
        (["--dataset", "nosuch"], "--dataset 'nosuch' is not known"),
        (["--dataset", "digits", "--limit", "0"], "--limit: must be positive"),
    ],
)
def test_unseen_ood_refuses_in_one_line(digits_run, args, said, capsys):
    assert main(["ood", str(digits_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "Traceback" not in err[0]


def test_unseen_ood_needs_a_finished_run(tmp_path, capsys):
    assert main(["ood", str(tmp_path), "--dataset", "digits"]) == 2
    assert "unseen: error:" in capsys.readouterr().err
