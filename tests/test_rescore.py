"""`unseen rescore`: a finished run's scores fitted and applied again, without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unseen.cli import main
from unseen.config import RunConfig
from unseen.errors import ConfigError, DataError, UnseenError
from unseen.experiment import run_experiment
from unseen.predict import load
from unseen.rescore import rescore_run, rescore_sweep

#: quick digits runs that train the same network whatever their scores
TINY = dict(epochs=2, train_subset=400, device="cpu", precision="fp32", report=False)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def msp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rescore") / "msp"
    run_experiment(RunConfig(out=str(out), scores=("msp",), **TINY), progress=False, log=None)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_rescoring_gives_what_a_run_with_those_scores_gives(msp_run, tmp_path):
    # the network is fixed by the seed: a run that asked for the scores from the start is
    # the known answer
    scores = ("msp", "vim", "knn", "react")
    fresh = tmp_path / "fresh"
    run_experiment(RunConfig(out=str(fresh), scores=scores, vim_dim=16, **TINY), False, None)
    run = copy_of(msp_run, tmp_path)
    history = (run / "history.csv").read_bytes()
    before = read(run / "metrics.json")

    result = rescore_run(run, {"scores": scores, "vim_dim": 16}, log=None, progress=False)

    after, expected = read(run / "metrics.json"), read(fresh / "metrics.json")
    assert result.metrics == after and list(after["scores"]) == list(scores)
    for name in scores:
        for key in ("auroc", "fpr_at_95_tpr", "threshold", "oscr"):
            assert after["scores"][name][key] == pytest.approx(expected["scores"][name][key])
    assert after["scores"]["vim"]["fit"]["dim"] == 16
    new, want = np.load(run / "scores.npz"), np.load(fresh / "scores.npz")
    assert sorted(new.files) == sorted(want.files)
    np.testing.assert_allclose(new["score_knn"], want["score_knn"])
    # what training recorded stays as it was
    assert (run / "history.csv").read_bytes() == history
    assert after["train_seconds"] == before["train_seconds"]
    assert after["closed_set_accuracy"] == before["closed_set_accuracy"]
    assert after["rescored"]["changed"] == {
        "scores": [["msp"], list(scores)],
        "vim_dim": [None, 16],
    }
    # the options are the run's now: config.json, and model.pt's copy that predict reads
    config = read(run / "config.json")
    assert config["scores"] == list(scores) and config["vim_dim"] == 16
    assert torch.load(run / "model.pt", weights_only=True)["config"]["vim_dim"] == 16
    predictor = load(run, score="vim")
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    assert len(predictor.predict(images)) == 3


def test_rescoring_with_the_run_s_own_options_reproduces_its_results(msp_run, tmp_path):
    run = copy_of(msp_run, tmp_path)
    before = read(run / "metrics.json")
    rescore_run(run, log=None, progress=False)
    after = read(run / "metrics.json")
    for metrics in (before, after):  # times, which differ
        del metrics["eval_seconds"]
        for entry in metrics["scores"].values():
            del entry["seconds"]
    assert after.pop("rescored")["changed"] == {} and after == before
    old, new = np.load(msp_run / "scores.npz"), np.load(run / "scores.npz")
    for key in old.files:
        np.testing.assert_array_equal(new[key], old[key])


def test_rescoring_says_when_a_given_option_has_no_effect(msp_run, tmp_path):
    run, said = copy_of(msp_run, tmp_path), []
    quiet = {"log": said.append, "progress": False, "report": False}
    rescore_run(run, {"scores": ("msp", "gen"), "vim_dim": 4}, **quiet)
    assert (
        "note: --vim-dim has no effect: this rescored run does not compute vim (--scores)" in said
    )
    said.clear()  # an option the score reads, or one left as the run had it: no note
    rescore_run(run, {"gen_m": 3}, **quiet)
    assert not [line for line in said if line.startswith("note:")]
    # given back at its default, with no score to read it: still said
    rescore_run(run, {"knn_k": 50}, **quiet)
    assert "note: --knn-k has no effect: this rescored run does not compute knn (--scores)" in said
    said.clear()  # the run has no one-vs-rest head, and rescoring cannot give it one
    rescore_run(run, {"doc_alpha": 2.0}, **quiet)
    assert said[1] == (
        "note: --doc-alpha has no effect: ovr-doc needs a one-vs-rest head, which this run was "
        "not trained with"
    )


def test_a_note_for_several_runs_is_said_once(msp_run, tmp_path, capsys):
    from unseen.cli import main
    from unseen.console import notes_once

    said = []
    say = notes_once(said.append)
    for message in ("note: a", "run 1", "note: a", "run 2", "note: b"):
        say(message)
    assert said == ["note: a", "run 1", "run 2", "note: b"] and notes_once(None) is None
    runs = [copy_of(msp_run, tmp_path / str(i)) for i in range(2)]
    assert main(["rescore", *map(str, runs), "--knn-k", "5", "--no-report"]) == 0
    shown = capsys.readouterr()
    assert (shown.out + shown.err).count("note: --knn-k has no effect") == 1


def test_rescoring_records_scores_that_all_takes_in_since_the_run(msp_run, tmp_path):
    """A run of an earlier version with --scores all lacks the scores added since; rescoring
    it with its own options computes them, and says and records so."""
    run, said = copy_of(msp_run, tmp_path), []
    quiet = {"log": said.append, "progress": False, "report": False}
    rescore_run(run, {"scores": ("all",)}, **quiet)
    metrics = read(run / "metrics.json")
    for name in ("gen", "ash"):  # as an earlier version, which had neither, wrote it
        del metrics["scores"][name]
    (run / "metrics.json").write_text(json.dumps(metrics))
    said.clear()
    after = rescore_run(run, **quiet).metrics
    assert after["rescored"]["changed"] == {}
    before, now = after["rescored"]["computed"]
    assert "gen" not in before and "gen" in now and "ash" in now
    assert (
        "note: --scores all now also computes ash, gen, which the run's version did not have"
        in said
    )
    from unseen.report import _rescored_text

    assert "scores added: ash, gen" in _rescored_text(after["rescored"])


def test_only_score_options_change(msp_run):
    with pytest.raises(ConfigError, match="changes only the score options .* not 'epochs'"):
        rescore_run(msp_run, {"epochs": 3}, log=None)
    with pytest.raises(ConfigError, match="vim_dim"):
        rescore_run(msp_run, {"vim_dim": -1}, log=None)
    with pytest.raises(ConfigError, match="not 'vimdim': no option has that name"):
        rescore_run(msp_run, {"vimdim": 16}, log=None)
    with pytest.raises(ConfigError, match="pass device as rescore_run's own argument"):
        rescore_run(msp_run, {"device": "cpu"}, log=None)
    # a score of a head the run does not have needs another run, not another flag
    with pytest.raises(ConfigError, match="trained --head softmax: train a run with --head ovr"):
        rescore_run(msp_run, {"scores": "+ovr"}, log=None)


def test_other_data_is_refused(msp_run, tmp_path):
    run = copy_of(msp_run, tmp_path)
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["data"]["images"] > 0  # model.pt holds the fingerprint of its data
    torch.save(
        {**ckpt, "data": {**ckpt["data"], "crc32": ckpt["data"]["crc32"] ^ 1}}, run / "model.pt"
    )
    with pytest.raises(DataError, match="training and validation images differ"):
        rescore_run(run, log=None, progress=False)
    # a run of an earlier version, without the fingerprint: the labels are still checked
    del ckpt["data"]
    torch.save(ckpt, run / "model.pt")
    arrays = dict(np.load(run / "scores.npz"))
    arrays["label"] = arrays["label"][::-1].copy()
    np.savez(run / "scores.npz", **arrays)
    with pytest.raises(DataError, match="test or validation images differ"):
        rescore_run(run, log=None, progress=False)


def test_a_damaged_or_missing_scores_file_is_one_sentence(msp_run, tmp_path, capsys):
    run = copy_of(msp_run, tmp_path)
    whole = (run / "scores.npz").read_bytes()
    (run / "scores.npz").write_bytes(whole[:500])  # a copy cut short
    assert main(["rescore", str(run), "--scores", "+knn", "--no-report", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"unseen: error: {run / 'scores.npz'} is truncated or damaged (BadZipFile)."
    (run / "scores.npz").unlink()
    with pytest.raises(DataError, match="scores.npz does not exist; the run folder is incomplete"):
        rescore_run(run, log=None, progress=False)
    assert read(run / "metrics.json") == read(msp_run / "metrics.json")  # nothing rewritten


def test_a_knn_k_above_the_smallest_class_is_noted(msp_run, tmp_path):
    log: list[str] = []
    rescore_run(copy_of(msp_run, tmp_path), {"scores": "+knn", "knn_k": 1000}, log=log.append,
                progress=False, report=False)  # fmt: skip
    assert any(line.startswith("note: --knn-k 1000 is above the") for line in log)


def test_changes_must_be_a_mapping(msp_run):
    with pytest.raises(TypeError, match="changes map score options to values.* not a str"):
        rescore_run(msp_run, "scores=+knn", log=None)
    with pytest.raises(TypeError, match="changes map score options to values.* not a str"):
        rescore_sweep(msp_run, "scores=+knn", log=None)  # before it reads the folder


def test_an_unfinished_run_is_refused(msp_run, tmp_path):
    run = copy_of(msp_run, tmp_path)
    (run / "run.json").unlink()
    with pytest.raises(UnseenError, match="is not a finished run"):
        rescore_run(run, log=None)


def test_every_head_of_a_multi_head_run_is_rescored(tmp_path, capsys):
    out = tmp_path / "heads"
    cfg = RunConfig(out=str(out), head=("softmax", "ovr"), **TINY)
    run_experiment(cfg, progress=False, log=None)
    code = main(["rescore", str(out), "--scores", "msp,mahalanobis,ovr-doc", "--quiet"])
    assert code == 0
    shown = capsys.readouterr().out
    assert "== head: ovr" in shown and "rescored in" in shown
    top = read(out / "metrics.json")["heads"]
    assert list(top["softmax"]["scores"]) == ["msp", "mahalanobis"]  # ovr-doc: one-vs-rest only
    assert list(top["ovr"]["scores"]) == ["msp", "mahalanobis", "ovr-doc", "ovr"]  # its own
    for head in ("softmax", "ovr"):
        assert read(out / head / "metrics.json") == top[head]
        assert read(out / head / "config.json")["scores"] == ["msp", "mahalanobis", "ovr-doc"]


def test_cli_errors_are_one_line_and_name_the_run(msp_run, tmp_path, capsys):
    run, missing = copy_of(msp_run, tmp_path), tmp_path / "nowhere"
    code = main(["rescore", str(run), str(missing), "--scores", "msp", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"unseen: error: run folder {missing} does not exist."
    code = main(["rescore", str(msp_run), "--vim-dim", "0"])
    assert code == 2 and "vim-dim" in capsys.readouterr().err
    code = main(["rescore", str(msp_run), "--epochs=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unseen rescore: error: unrecognized arguments: --epochs")
    assert "--epochs needs another run (see unseen rescore --help)" in err


def test_a_head_folder_is_refused_for_its_run(tmp_path):
    out = tmp_path / "heads"
    run_experiment(RunConfig(out=str(out), head=("softmax", "ovr"), **TINY), False, None)
    with pytest.raises(ConfigError, match=f"is one head of the run {out}; rescore {out}"):
        rescore_run(out / "softmax", log=None)


def test_a_folder_dataset_that_moved_is_given_its_new_path(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog", "owl")):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.new("L", (8, 8), color=c * 80 + i).save(root / split / cls / f"{i}.png")
    run = tmp_path / "run"
    cfg = RunConfig(out=str(run), dataset=f"folder:{root}", val_fraction=0.25, **TINY)
    run_experiment(cfg, False, None)
    moved = root.rename(tmp_path / "moved")
    with pytest.raises(DataError, match=f"folder dataset {root} needs subfolders") as caught:
        rescore_run(run, log=None)
    assert str(caught.value).endswith("; if the data moved, --dataset says where it is now.")
    with pytest.raises(ConfigError, match="is not the run's data source"):
        rescore_run(run, dataset="digits", log=None)
    result = rescore_run(run, {"scores": ("msp", "energy")}, dataset=f"folder:{moved}", log=None)
    assert read(run / "config.json")["dataset"] == f"folder:{moved}"
    assert result.metrics["rescored"]["changed"]["dataset"] == [f"folder:{root}", f"folder:{moved}"]
    rescore_run(run, log=None, progress=False)  # found where config.json now says
    (moved / "test" / "cat" / "0.png").write_bytes(b"damaged")  # there, but unreadable
    with pytest.raises(DataError, match="0.png could not be decoded") as caught:
        rescore_run(run, log=None)
    assert "if the data moved" not in str(caught.value)


def test_rescoring_keeps_the_trained_options_the_caller_s_threads_and_no_stale_plot(
    msp_run, tmp_path
):
    run = copy_of(msp_run, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    asked = torch.get_num_threads()
    try:
        rescore_run(run, {"scores": ("msp", "energy")}, report=True, progress=False, log=None)
        assert torch.get_num_threads() == asked
    finally:
        torch.set_num_threads(threads)
    assert (run / "plots" / "hist_energy.png").is_file()
    metrics = rescore_run(run, {"scores": ("msp",)}, report=True, log=None).metrics
    # the report no longer shows energy, and its histogram is gone with it
    assert not (run / "plots" / "hist_energy.png").exists()
    assert (run / "plots" / "hist_msp.png").is_file()
    # what the run trained with survives a second rescore
    assert metrics["rescored"]["trained_with"]["scores"] == ["msp"]
    assert metrics["rescored"]["changed"] == {"scores": [["msp", "energy"], ["msp"]]}
    # and the report says the scores were fitted again
    assert (
        "last changed: scores msp, energy -> msp; trained with scores msp"
        in (run / "report.md").read_text()
    )


def test_scores_starting_with_plus_are_added_to_the_run_s(msp_run, tmp_path, capsys):
    run = copy_of(msp_run, tmp_path)
    assert main(["rescore", str(run), "--scores", "+energy", "--no-report", "--quiet"]) == 0
    metrics = read(run / "metrics.json")
    assert list(metrics["scores"]) == ["msp", "energy"]
    assert metrics["rescored"]["changed"] == {"scores": [["msp"], ["msp", "energy"]]}
    assert read(run / "config.json")["scores"] == ["msp", "energy"]
    result = rescore_run(run, {"scores": "+knn,msp"}, log=None, progress=False, report=False)
    assert list(result.metrics["scores"]) == ["msp", "energy", "knn"]


def test_a_report_is_rebuilt_where_the_run_has_one(msp_run, tmp_path):
    run = copy_of(msp_run, tmp_path)  # trained with --no-report
    assert main(["rescore", str(run), "--scores", "+energy", "--quiet"]) == 0
    assert not (run / "report.html").exists()  # none made for a --no-report run
    assert main(["rescore", str(run), "--report", "--quiet"]) == 0
    assert (run / "plots" / "hist_energy.png").is_file() and (run / "report.html").is_file()
    assert main(["rescore", str(run), "--scores", "msp", "--quiet"]) == 0
    assert not (run / "plots" / "hist_energy.png").exists()  # the existing one kept current


def test_a_sweep_folder_is_rescored_run_by_run_then_summarised(tmp_path, capsys):
    from unseen.sweep import SweepOptions, run_sweep

    base = RunConfig(scores=("msp",), **TINY)
    sweep = run_sweep(base, SweepOptions("single", seeds=2), tmp_path / "sw", log=None)
    first, second = (r.run_dir for r in sweep.runs)
    (second / "run.json").unlink()  # an unfinished run: left alone
    code = main(["rescore", str(tmp_path / "sw"), "--scores", "msp,energy", "--no-report"])
    out = capsys.readouterr().out
    assert code == 0 and "1 of the sweep's 2 runs is not finished: left as they are" in out
    assert "1 run rescored" in out and "energy" in out
    assert list(read(first / "metrics.json")["scores"]) == ["msp", "energy"]
    assert list(read(second / "metrics.json")["scores"]) == ["msp"]
    summary = read(tmp_path / "sw" / "summary.json")
    assert summary["score_names"] == ["msp", "energy"] and summary["runs_finished"] == 1
    code = main(["rescore", str(tmp_path / "sw"), "--dataset", "npz:d.npz"])
    assert code == 2 and "is not the run's data source (digits)" in capsys.readouterr().err


def test_a_sweep_on_a_relative_path_rescores_from_anywhere_and_after_a_move(
    tmp_path, monkeypatch, capsys
):
    from sklearn.datasets import load_digits

    from unseen.sweep import SweepOptions, run_sweep

    x, y = (load_digits().images * 16).astype(np.uint8), load_digits().target
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    np.savez(work / "d.npz", x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    monkeypatch.chdir(work)
    base = RunConfig(dataset="npz:d.npz", scores=("msp",), **{**TINY, "train_subset": None})
    sweep = run_sweep(base, SweepOptions("single", seeds=2), "sw", log=None)
    assert read(work / "sw" / "sweep.json")["base_config"]["dataset"] == "npz:d.npz"

    monkeypatch.chdir(elsewhere)  # npz:d.npz names nothing here: the runs' record is read
    assert main(["rescore", str(work / "sw"), "--scores", "msp,energy", "--no-report"]) == 0
    for run in sweep.runs:
        assert list(read(work / run.run_dir / "metrics.json")["scores"]) == ["msp", "energy"]

    moved = tmp_path / "moved.npz"
    (work / "d.npz").rename(moved)
    assert main(["rescore", str(work / "sw"), "--scores", "msp", "--no-report"]) == 2
    assert "d.npz" in capsys.readouterr().err
    code = main(
        ["rescore", str(work / "sw"), "--scores", "msp", "--dataset", f"npz:{moved}", "--no-report"]
    )
    assert code == 0, capsys.readouterr().err
    for run in sweep.runs:
        saved = read(work / run.run_dir / "config.json")
        assert saved["dataset"] == f"npz:{moved}" and saved["scores"] == ["msp"]
    # the summary is the sweep's as planned: its folders did not change
    assert read(work / "sw" / "summary.json")["runs_finished"] == 2


def test_a_sweep_that_cannot_be_summarised_again_is_refused_before_any_run_changes(
    tmp_path, capsys
):
    from unseen.sweep import SweepOptions, run_sweep

    base = RunConfig(scores=("msp",), **TINY)
    sweep = run_sweep(base, SweepOptions("single", seeds=2), tmp_path / "sw", log=None)
    plan_file = tmp_path / "sw" / "sweep.json"
    plan = read(plan_file)
    before = [(r.run_dir / "metrics.json").read_bytes() for r in sweep.runs]
    for edit, message in (
        ({"protocol": "loo"}, "lists other runs than its options plan"),  # 10 runs, not 2
        ({"seeds": "two"}, "cannot rescore the sweep in"),
        ({"protocol": 5}, "cannot rescore the sweep in"),
        ({"base_config": {**plan["base_config"], "dataset": "npz:nowhere.npz"}}, "nowhere.npz"),
    ):
        plan_file.write_text(json.dumps({**plan, **edit}))
        code = main(["rescore", str(tmp_path / "sw"), "--scores", "msp,energy", "--no-report"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
        assert [(r.run_dir / "metrics.json").read_bytes() for r in sweep.runs] == before


def test_a_sweep_on_a_named_dataset_that_moved_rescores_with_data_root(tmp_path, capsys):
    from test_data import make_idx_set

    from unseen.sweep import SweepOptions, run_sweep

    first, moved = tmp_path / "first", tmp_path / "moved"
    make_idx_set(first / "MNIST" / "raw", gz=True, n_train=100, n_test=40)
    base = RunConfig(
        dataset="mnist", data_root=str(first), scores=("msp",), **{**TINY, "epochs": 1}
    )
    sweep = run_sweep(base, SweepOptions("single", seeds=1), tmp_path / "sw", log=None)
    first.rename(moved)

    assert main(["rescore", str(tmp_path / "sw"), "--scores", "energy", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "mnist IDX files not found" in err and str(first) in err
    assert err.strip().endswith("if the data moved, --data-root says where it is now.")
    args = ["rescore", str(tmp_path / "sw"), "--scores", "energy", "--data-root", str(moved)]
    assert main([*args, "--no-report"]) == 0, capsys.readouterr().err
    saved = read(sweep.runs[0].run_dir / "config.json")
    assert (saved["dataset"], saved["data_root"], saved["scores"]) == (
        "mnist",
        str(moved),
        ["energy"],
    )
    assert read(tmp_path / "sw" / "summary.json")["runs_finished"] == 1


def test_a_damaged_run_of_a_sweep_is_left_out_of_its_rescore_and_report(tmp_path, capsys):
    from unseen.sweep import SweepOptions, run_sweep

    base = RunConfig(scores=("msp",), **TINY)
    sweep = run_sweep(base, SweepOptions("single", seeds=3), tmp_path / "sw", log=None)
    broken, no_model, whole = (r.run_dir for r in sweep.runs)
    (broken / "metrics.json").write_text("{\n")
    (no_model / "model.pt").unlink()  # its results can be read, but it cannot be rescored
    code = main(["rescore", str(tmp_path / "sw"), "--scores", "msp,energy", "--no-report"])
    out = capsys.readouterr().out
    assert code == 1 and "1 run rescored" in out
    assert "2 finished runs are damaged and left out (delete a run's folder" in out
    assert f"  {broken}: metrics.json is not valid JSON (" in out
    assert f"  {no_model}: model.pt is missing\n" in out
    assert list(read(whole / "metrics.json")["scores"]) == ["msp", "energy"]
    assert list(read(no_model / "metrics.json")["scores"]) == ["msp"]
    assert (broken / "metrics.json").read_text() == "{\n"  # left as it was
    summary = read(tmp_path / "sw" / "summary.json")
    assert summary["variants"][0]["runs"] == 1 and summary["score_names"] == ["msp", "energy"]
    assert [d["dir"] for d in summary["runs_damaged"]] == [str(broken), str(no_model)]
    # the comparison of the sweep's folder leaves the unreadable one out too, and says so
    assert main(["report", str(tmp_path / "sw"), "--no-tsne"]) == 1
    err = capsys.readouterr().err
    assert f"unseen: skipping {broken}: damaged: metrics.json is not valid JSON (" in err
    assert no_model.name not in err
    rows = read(tmp_path / "sw" / "report" / "comparison.json")  # msp, and msp + energy
    assert sorted(run for row in rows for run in row["runs"]) == [str(no_model), str(whole)]
    # the run itself, named: its one-sentence error
    for command in ("rescore", "report"):
        assert main([command, str(broken)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"unseen: error: {broken / 'metrics.json'} is not valid JSON (")
        assert len(err.splitlines()) == 1
