"""`unseen ood`: another dataset's test images scored as unseen by a finished run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from unseen import RunConfig
from unseen.cli import main
from unseen.experiment import prepare, run_experiment
from unseen.farood import evaluate_ood, ood_path

#: conftest's digits_run configuration (a finished default-split digits run, 9 held out)
QUICK = dict(epochs=8, device="cpu", precision="fp32")
QUICK_ARGS = ["--device", "cpu", "--precision", "fp32", "--no-report", "--quiet"]


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
        assert_same_metrics(m, run[name], name)
    labelled = json.loads((digits_run / "metrics.json").read_text())["unseen_predicted_as"]
    assert result["predicted_as"] == labelled


def assert_same_metrics(got: dict, run: dict, name: str) -> None:
    """Every metric the result has, as ``metrics.json``'s entry for the score has it (which
    also holds what a score's fit found, e.g. ovr-doc's class thresholds, and its time)."""
    keys = set(got)
    assert keys >= {"auroc", "fpr_at_95_tpr", "threshold", "threshold_from", "unseen_rejected",
                    "known_rejected", "open_set_macro_f1", "val_known_accepted"}  # fmt: skip
    assert set(run) >= keys, (name, keys - set(run))
    for key in keys:
        if isinstance(run[key], str):
            assert got[key] == run[key], (name, key)
        else:
            assert got[key] == pytest.approx(run[key], abs=1e-9), (name, key)


def test_held_out_class_0_of_a_one_vs_rest_run_at_another_acceptance(tmp_path):
    # the same known answer where the labels of known classes are not their digits (class 0
    # held out), the thresholds are not the default acceptance's, and ovr-doc decides by
    # its own rule (threshold 0)
    cfg = RunConfig(out=str(tmp_path / "run"), holdout=("0",), head=("ovr",), epochs=3,
                    known_acceptance=0.9, device="cpu", precision="fp32", report=False,
                    scores=("msp", "energy", "ovr-doc", "mahalanobis"))  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    sd = prepare(cfg).split_data
    zeros = sd.x_test[sd.test_is_unseen].numpy()
    result = evaluate_ood(tmp_path / "run", save_npz_dataset(tmp_path / "zeros.npz", zeros))
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())["scores"]
    # the scores asked for, and the ovr head's own
    assert set(result["scores"]) == set(run) == {"msp", "energy", "ovr-doc", "mahalanobis", "ovr"}
    assert result["scores"]["ovr-doc"]["threshold_from"] == "score"
    for name, m in result["scores"].items():
        assert_same_metrics(m, run[name], name)


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


def test_unseen_ood_prints_saves_and_converts_another_kind_of_image(
    digits_run, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"  # a copy: the shared run folder stays as the run left it
    shutil.copytree(digits_run, run)
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (30, 3, 16, 12), dtype=np.uint8)  # 16 high, 12 wide, RGB
    name = save_npz_dataset(tmp_path / "colour.npz", colour)
    monkeypatch.chdir(tmp_path)  # the run folder given relative: said back as given
    assert main(["ood", "run", "--dataset", name, "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert f"\nsaved: {ood_path('run', name)}\n" in out
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
    had_results = (digits_run / "ood").exists()
    assert main(["ood", str(digits_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "Traceback" not in err[0]
    assert (digits_run / "ood").exists() == had_results  # no empty ood/ left behind


def test_unseen_ood_needs_a_finished_run(tmp_path, capsys):
    assert main(["ood", str(tmp_path), "--dataset", "digits"]) == 2
    assert "unseen: error:" in capsys.readouterr().err


def test_a_result_of_an_earlier_state_of_the_run_is_flagged_and_overwrite_removes_it(
    digits_run, tmp_path, capsys
):
    from unseen.report import build_report

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    name = save_npz_dataset(tmp_path / "x.npz", np.full((5, 1, 8, 8), 200, np.uint8))
    assert main(["ood", str(run), "--dataset", name]) == 0
    # moved elsewhere (and copied without its files' times), the result is still the run's
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved, copy_function=shutil.copy)
    (moved / "ood" / "notes.json").write_text("{}")  # a file of the user's own
    build_report(moved, tsne=False)
    md = (moved / "report.md").read_text()
    assert "5 test images of" in md and "Scored before" not in md
    assert "Left out of the report: notes.json in ood/" in md
    # new thresholds, and the dataset gone, so that the rescore cannot score it again
    (tmp_path / "x.npz").unlink()
    assert main(["rescore", str(run), "--known-acceptance", "0.8"]) == 0
    capsys.readouterr()
    build_report(run, tsne=False)
    md = (run / "report.md").read_text()
    assert "Scored before the run was last finished" in md and "5 test images of" not in md
    assert f"`unseen ood {run} --dataset {name}` scores it again" in md
    build_report(moved, tsne=False)  # the copy was not rescored: still its figures
    assert "5 test images of" in (moved / "report.md").read_text()
    assert main(["run", *QUICK_ARGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "ood").exists()  # the old network's results go with it


def test_unseen_ood_checks_it_can_save_before_the_work(digits_run, tmp_path, monkeypatch, capsys):
    import unseen.farood
    import unseen.runfolder

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(unseen.runfolder, "check_writable", refuse)
    monkeypatch.setattr(unseen.farood, "evaluate_ood", lambda *a, **k: pytest.fail("worked first"))
    assert main(["ood", str(digits_run), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("ood/digits.json: Permission denied.")


@pytest.mark.parametrize("damage", ["no is_unseen", "nan"])
def test_a_damaged_scores_npz_is_one_clear_error(digits_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    arrays = dict(np.load(run / "scores.npz"))
    if damage == "nan":
        arrays["score_msp"][0] = np.nan
    else:
        del arrays["is_unseen"]
    np.savez(run / "scores.npz", **arrays)
    assert main(["ood", str(run), "--dataset", "digits", "--limit", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scores.npz" in err[0] and "damaged" in err[0]
