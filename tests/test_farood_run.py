"""``--ood`` on `unseen run`, `unseen sweep` and `unseen rescore`: far-OOD datasets scored once
a run is trained, as `unseen ood` scores them, and averaged over a sweep's runs."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from unseen import RunConfig
from unseen.cli import main
from unseen.config import parse_value
from unseen.errors import ConfigError, DataError, Interrupted
from unseen.experiment import prepare, run_experiment
from unseen.farood import evaluate_ood, is_current, ood_image_scores, ood_path
from unseen.runfolder import is_finished
from unseen.sweep import SweepOptions, config_hash, run_sweep

QUICK = dict(epochs=8, device="cpu", precision="fp32")  # conftest's digits_run
FAST = dict(epochs=2, device="cpu", precision="fp32", report=False)


def save_npz_dataset(path, x_test: np.ndarray) -> str:
    """An ``npz:PATH`` dataset whose test split is ``x_test`` (N x C x H x W uint8)."""
    np.savez(path, x_train=x_test[:2], y_train=np.zeros(2, int), x_test=x_test,
             y_test=np.zeros(len(x_test), int), classes=np.array(["other"]))  # fmt: skip
    return f"npz:{path}"


def noise(path, n: int = 40, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return save_npz_dataset(path, rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_with_ood_scores_each_dataset_as_unseen_ood_does(digits_run, tmp_path):
    # the known answer of `unseen ood`: the run's own held-out 9s, given as another dataset,
    # give the run's own metrics; here they are scored by the run itself, with --ood
    sd = prepare(RunConfig(out=str(digits_run), **QUICK)).split_data
    nines = save_npz_dataset(tmp_path / "nines.npz", sd.x_test[sd.test_is_unseen].numpy())
    other = noise(tmp_path / "noise.npz")
    run = tmp_path / "run"
    result = run_experiment(
        RunConfig(out=str(run), ood=(nines, other), **QUICK), progress=False, log=None
    )
    assert result.ood_errors == {} and result.seconds["ood"] > 0
    # the same training as the shared run (same seed and options): the same metrics
    own = json.loads((run / "metrics.json").read_text())["scores"]
    saved = json.loads(ood_path(run, nines).read_text())
    assert saved["num_images"] == 54 and set(saved["scores"]) == set(own)
    for name, m in saved["scores"].items():
        for key in ("auroc", "fpr_at_95_tpr", "unseen_rejected", "known_rejected"):
            assert m[key] == pytest.approx(own[name][key], abs=1e-9), (name, key)
    # each image's scores, saved beside the result: those the run stored for the same images
    stored = np.load(run / "scores.npz")
    per_image = ood_image_scores(run, saved)
    assert set(per_image) == set(own) and ood_path(run, nines).with_suffix(".npz").is_file()
    for name, values in per_image.items():
        mine = stored[f"score_{name}"][stored["is_unseen"].astype(bool)]
        np.testing.assert_allclose(values, mine, rtol=1e-6, atol=1e-6, err_msg=name)
    # what `unseen ood` computes from the finished run, figure for figure
    again = evaluate_ood(run, other)
    assert json.loads(ood_path(run, other).read_text())["scores"] == again["scores"]
    assert "image_scores" not in json.loads(ood_path(run, other).read_text())
    # run.json was written twice (before --ood and the report, then with their times): the
    # results stay those of the run as it stands, and the report shows them as current
    finished = json.loads((run / "run.json").read_text())
    assert finished["status"] == "finished" and "ood" in finished["seconds"]
    assert is_current(run, nines) and is_current(run, other)
    md = (run / "report.md").read_text()
    assert f"## Another dataset as unseen: {nines}" in md and "Scored before" not in md
    assert "54 test images of" in md and "40 test images of" in md
    # with a figure of its images' scores beside the run's own, in its section only
    figure = f"plots/ood_{ood_path(run, other).stem}.png"
    assert (run / figure).is_file() and md.count(f"]({figure})") == 1
    section = md.split(f"## Another dataset as unseen: {other}")[1].split("\n## ")[0]
    assert f"energy: known vs unseen vs {other}" in section and figure in section


def test_a_run_records_where_it_looked_for_its_ood_data_as_unseen_ood_does(tmp_path):
    # a rescore scores the result again from there (it was recorded as None: looked for in
    # the usual places only)
    other, run, root = noise(tmp_path / "noise.npz"), tmp_path / "run", tmp_path / "root"
    cfg = RunConfig(out=str(run), ood=(other,), data_root=str(root), **{**FAST, "epochs": 1})
    run_experiment(cfg, progress=False, log=None)
    assert json.loads(ood_path(run, other).read_text())["data_root"] == str(root.resolve())
    assert evaluate_ood(run, other, data_root=str(root))["data_root"] == str(root.resolve())


def test_resuming_a_finished_run_with_ood_prints_each_dataset(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    name = noise(tmp_path / "noise.npz")
    args = ["run", "--out", str(run), "--epochs", "8", "--device", "cpu", "--precision", "fp32"]
    assert main([*args, "--resume", "--ood", name, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"\n== far-OOD {name}: 40 test images from" in out
    assert "against the run's 486 known test images" in out
    assert out.index("== far-OOD") < out.index("run folder:")


def test_a_relative_ood_path_is_recorded_absolute(tmp_path, monkeypatch, capsys):
    # given relative to the working directory, as --dataset npz:PATH may be: the run
    # records it absolute, prints its result, and resumes from anywhere
    noise(tmp_path / "noise.npz")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--out", "new", "--epochs", "1", "--no-report", "--device", "cpu"]
    assert main([*args, "--ood", "npz:noise.npz", "--quiet"]) == 0
    out = capsys.readouterr().out
    absolute = f"npz:{tmp_path / 'noise.npz'}"
    assert f"\n== far-OOD {absolute}: 40 test images from" in out
    assert ", far-OOD " in out.split("time: ")[1].splitlines()[0]  # its stage in the time line
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["ood"] == [absolute] and is_current(tmp_path / "new", absolute)
    monkeypatch.chdir(tmp_path.parent)
    assert main(["run", "--out", str(tmp_path / "new"), "--resume", "--quiet"]) == 0


def test_resuming_a_finished_run_scores_only_what_it_lacks(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    first, second = noise(tmp_path / "a.npz"), noise(tmp_path / "b.npz", seed=1)
    trained = {f: digest(run / f) for f in ("model.pt", "metrics.json", "scores.npz")}
    log: list[str] = []
    cfg = RunConfig(out=str(run), resume=True, ood=(first,), report=False, **QUICK)
    result = run_experiment(cfg, progress=False, log=log.append)
    assert any(f"scoring --ood {first}" in line for line in log)
    assert is_current(run, first) and result.ood_errors == {}
    kept = digest(ood_path(run, first))
    log.clear()
    run_experiment(cfg.replace(ood=(first, second)), progress=False, log=log.append)
    assert any(f"scoring --ood {second}" in line for line in log)
    assert not any(first in line for line in log)  # current: not scored again
    assert digest(ood_path(run, first)) == kept and is_current(run, second)
    assert {f: digest(run / f) for f in trained} == trained  # nothing trained again


def test_an_ood_dataset_that_cannot_be_read_costs_only_its_result(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    bad = undecodable(tmp_path / "bad")  # found before training, decoded after it
    args = ["run", "--out", str(run), "--epochs", "8", "--device", "cpu", "--precision", "fp32"]
    assert main([*args, "--resume", "--ood", f"folder:{bad}", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"== far-OOD folder:{bad}: not scored: image {bad / 'x.png'} could not be decoded" in out
    assert is_finished(run) and not ood_path(run, f"folder:{bad}").exists()


def undecodable(folder):
    """A folder holding one .png file that is no image."""
    folder.mkdir()
    (folder / "x.png").write_bytes(b"not a png")
    return folder


def test_a_run_stopped_while_writing_its_report_gets_it_on_resume(tmp_path, monkeypatch):
    import unseen.report

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    cfg = RunConfig(out=str(tmp_path / "run"), **{**FAST, "report": True})
    monkeypatch.setattr(unseen.report, "build_report", stopped)
    with pytest.raises(Interrupted, match="--resume --out .* adds what it lacks"):
        run_experiment(cfg, progress=False, log=None)
    assert is_finished(tmp_path / "run") and not (tmp_path / "run" / "report.html").exists()
    monkeypatch.undo()
    log: list[str] = []
    run_experiment(cfg.replace(resume=True), progress=False, log=log.append)
    assert (tmp_path / "run" / "report.html").is_file()
    assert any("nothing to train" in line for line in log)


@pytest.mark.parametrize(
    "ood, error, said",
    [
        (("nosuch",), ConfigError, "--ood 'nosuch' is not known; choose one of: digits"),
        (("digits",), ConfigError, "--ood digits is the run's own dataset"),
        (("fashion-mnist", "fashion-mnist"), ConfigError, "--ood lists fashion-mnist twice"),
        (("npz:/no/such.npz",), DataError, "--ood npz:/no/such.npz: npz file /no/such.npz does"),
        (("folder:/no/such",), DataError, "--ood folder:/no/such: folder /no/such does not exist"),
    ],
)
def test_ood_is_checked_before_any_training(tmp_path, ood, error, said):
    out = tmp_path / "run"
    with pytest.raises(error, match="^" + said.replace("(", r"\(").replace(".", r"\.")):
        run_experiment(RunConfig(out=str(out), ood=ood, **FAST), progress=False, log=None)
    assert not (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


def test_the_cli_refuses_a_missing_ood_dataset_in_one_line(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--ood", "npz:/no/such.npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ood npz:/no/such.npz: npz file" in err[0]


def test_ood_takes_a_path_with_a_comma_from_flags_and_config_files(tmp_path):
    assert parse_value("ood", '"npz:/a,b.npz",mnist') == ("npz:/a,b.npz", "mnist")
    with pytest.raises(ConfigError, match="--ood must be dataset names"):
        parse_value("ood", ",")
    assert parse_value("ood", ["npz:/a,b.npz", "mnist"], source="c.toml") == (
        "npz:/a,b.npz",
        "mnist",
    )
    assert parse_value("ood", "none") == ()
    assert RunConfig(ood="mnist").ood == ("mnist",)


def test_ood_changes_no_sweep_hash():
    # far-OOD results are added to a run, never a reason to train it again
    base = RunConfig(epochs=2)
    assert config_hash(base) == config_hash(base.replace(ood=("mnist", "npz:/x.npz")))


def test_a_sweep_scores_its_finished_runs_and_averages_the_results(tmp_path, capsys):
    out = tmp_path / "sweep"
    name = noise(tmp_path / "noise.npz", n=60)
    opts = SweepOptions(protocol="single", seeds=2)
    first = run_sweep(RunConfig(**FAST), opts, out, report=False, log=None)
    dirs = [r.run_dir for r in first.runs]
    trained = {d: digest(d / "model.pt") for d in dirs}
    assert "far_ood" in first.summary["variants"][0] and not first.summary["variants"][0]["far_ood"]
    # the same sweep with --ood: nothing trained again, each run scores the dataset
    states = []
    run_sweep(RunConfig(**FAST, ood=(name,)), opts, out, dry_run=True, log=states.append)
    assert all(f"finished, to complete: far-OOD {name}" in s for s in states) and len(states) == 2
    log: list[str] = []
    second = run_sweep(RunConfig(**FAST, ood=(name,)), opts, out, report=False, log=log.append)
    assert (
        "2 runs: 2 already finished, 0 to run, 2 finished to complete (--ood results, or a report)"
        in log
    )
    assert sum(": completed in" in line for line in log) == 2
    assert {d: digest(d / "model.pt") for d in dirs} == trained
    # the known answer: the mean and std of the two runs' own results
    results = [json.loads(ood_path(d, name).read_text()) for d in dirs]
    far = second.summary["variants"][0]["far_ood"][name]
    assert far["runs"] == 2 and far["num_images"] == [60]
    for key in ("auroc", "fpr_at_95_tpr", "unseen_rejected"):
        values = [r["scores"]["msp"][key] for r in results]
        assert far["scores"]["msp"][key]["mean"] == pytest.approx(np.mean(values))
        assert far["scores"]["msp"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    text = (out / "summary.txt").read_text()
    assert f"far-OOD {name}: 60 of its test images as unseen, 2 runs" in text
    # the comparison report of the same runs: the same figures, in a table and the CSV
    from unseen.report import write_comparison

    write_comparison(dirs, tmp_path / "cmp")
    (row,) = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert row["far_ood"][name]["runs"] == 2
    assert row["far_ood"][name]["scores"]["msp"]["auroc"] == pytest.approx(
        far["scores"]["msp"]["auroc"]
    )
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Another dataset as unseen (far-OOD)" in md and f"| {name} | 2 | msp |" in md
    assert f",msp,ood:{name}:auroc," in (tmp_path / "cmp" / "comparison.csv").read_text()
    # a run without the result (lost, or gone stale) is said, and left out of the mean
    ood_path(dirs[1], name).unlink()
    third = run_sweep(RunConfig(**FAST), opts, out, summary_only=True, report=False, log=None)
    assert third.summary["variants"][0]["far_ood"][name]["runs"] == 1
    assert any(
        f"far-OOD {name} was scored on 1 of the 2 runs" in w
        for w in third.summary["score_coverage"]
    )


def test_a_sweep_scores_its_rescored_runs_and_says_what_no_run_could_score(tmp_path):
    out = tmp_path / "sweep"
    opts = SweepOptions(protocol="single", seeds=2)
    run_sweep(RunConfig(**FAST), opts, out, report=False, log=None)
    assert main(["rescore", str(out), "--scores", "+vim", "--quiet"]) == 0
    good, bad = noise(tmp_path / "good.npz"), f"folder:{undecodable(tmp_path / 'bad')}"
    log: list[str] = []
    result = run_sweep(RunConfig(**FAST, ood=(good, bad)), opts, out, report=False, log=log.append)
    # the runs' options differ from the sweep's now (--scores): scored all the same, not failed
    assert [o.status for o in result.outcomes] == ["finished", "finished"]
    assert not any((r.run_dir / "error.txt").exists() for r in result.runs)
    assert all(is_current(r.run_dir, good) for r in result.runs)
    far = result.summary["variants"][0]["far_ood"]
    assert far[good]["runs"] == 2 and "vim" in far[good]["scores"] and bad not in far
    assert sum(f"but far-OOD {bad} not scored (image " in line for line in log) == 2
    assert any(
        f"far-OOD {bad} was scored on none of the 2 runs" in w
        for w in result.summary["score_coverage"]
    )


def test_a_sweep_checks_its_ood_files_before_any_run(tmp_path):
    with pytest.raises(DataError, match="--ood npz:/no/such.npz: npz file"):
        run_sweep(RunConfig(**FAST, ood=("npz:/no/such.npz",)), SweepOptions("single"),
                  tmp_path / "sweep", report=False, log=None)  # fmt: skip
    assert not (tmp_path / "sweep").exists()


def test_a_limit_draws_the_same_images_every_time_not_the_first_ones():
    from unseen.farood import subset_index

    drawn = subset_index(1000, 10)
    assert drawn.tolist() == subset_index(1000, 10).tolist() == sorted(set(drawn.tolist()))
    assert drawn.tolist() != list(range(10)) and int(drawn.max()) > 100
    assert subset_index(5, 10).tolist() == [0, 1, 2, 3, 4]


def test_a_rescore_scores_the_far_ood_results_again(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    kept, gone = noise(tmp_path / "kept.npz"), noise(tmp_path / "gone.npz", seed=1)
    for name in (kept, gone):
        assert main(["ood", str(run), "--dataset", name]) == 0
    (tmp_path / "gone.npz").unlink()
    capsys.readouterr()
    assert main(["rescore", str(run), "--scores", "+vim", "--no-report"]) == 0
    out = capsys.readouterr().out
    # the result of the data still there follows the rescored run: current, with the new score
    assert is_current(run, kept)
    assert "vim" in json.loads(ood_path(run, kept).read_text())["scores"]
    # the other cannot be: it stays as it was, out of date, and the rescore says so
    assert not is_current(run, gone)
    assert f"far-OOD {gone} not scored again, so out of date" in out
    # once its data is back, the next rescore scores it again, out of date as it was
    noise(tmp_path / "gone.npz", seed=1)
    assert main(["rescore", str(run), "--no-report"]) == 0
    assert is_current(run, gone) and is_current(run, kept)


def test_a_far_ood_set_needs_no_labels_nor_a_training_split(digits_run, tmp_path):
    from PIL import Image

    from unseen.data import load_test_images

    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    (flat / "deeper").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(flat / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(flat / "deeper" / "x.png")
    (flat / "notes.txt").write_text("not an image")
    got = load_test_images(f"folder:{flat}")
    assert tuple(got.x.shape) == (4, 1, 12, 12) and got.source == str(flat)  # the common size
    # a folder dataset with train/ and test/: its test images only
    split = tmp_path / "split"
    for part, n in (("train", 2), ("test", 5)):
        (split / part / "a").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(split / part / "a" / f"{i}.png")
    assert len(load_test_images(f"folder:{split}").x) == 5
    # an npz of images alone, under the names `unseen predict` reads too
    np.savez(tmp_path / "x.npz", x=rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8))
    got = load_test_images(f"npz:{tmp_path / 'x.npz'}")
    assert tuple(got.x.shape) == (7, 3, 8, 8)
    # scored by a run like any dataset
    result = evaluate_ood(digits_run, f"folder:{flat}")
    assert result["num_images"] == 4 and sum(result["predicted_as"].values()) == 4


@pytest.mark.parametrize(
    "kind, make, said",
    [
        ("folder", lambda p: p.mkdir(), "holds no image files"),
        ("folder", lambda p: None, "does not exist"),
        ("npz", lambda p: np.savez(p, y=np.zeros(3)), "has no array named x_test, x, images"),
        ("npz", lambda p: np.savez(p, x=np.zeros((3, 8, 8))), "must be uint8 images, not float64"),
        # one colour image without its N axis, as `unseen predict` refuses it too
        (
            "npz",
            lambda p: np.savez(p, x=np.zeros((8, 8, 3), np.uint8)),
            r"of shape \(8, 8, 3\) looks like one H x W x C image.*save it as x\[None\]",
        ),
    ],
)
def test_an_unreadable_far_ood_set_is_one_sentence(tmp_path, kind, make, said):
    from unseen.data import load_test_images

    path = tmp_path / ("set.npz" if kind == "npz" else "set")
    make(path)
    with pytest.raises(DataError, match=said):
        load_test_images(f"{kind}:{path}")


def test_an_npz_set_s_type_and_shape_are_checked_before_training(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match="x in .* must be uint8 images, not float32"):
        run_experiment(RunConfig(out=str(tmp_path / "run"), ood=(f"npz:{tmp_path / 'f.npz'}",),
                                 **FAST), progress=False, log=None)  # fmt: skip
    assert not (tmp_path / "run" / "config.json").exists()


def test_two_paths_with_one_file_safe_name_keep_two_results(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (tmp_path / "sets").mkdir()
    one, two = noise(tmp_path / "sets" / "far.npz", n=10), noise(tmp_path / "sets_far.npz", n=20)
    assert ood_path(run, one) != ood_path(run, two)
    cfg = RunConfig(out=str(run), resume=True, ood=(one, two), report=False, **QUICK)
    run_experiment(cfg, progress=False, log=None)
    assert [json.loads(ood_path(run, d).read_text())["num_images"] for d in (one, two)] == [10, 20]
    assert is_current(run, one) and is_current(run, two)


def test_each_head_of_a_run_scores_the_datasets(tmp_path, capsys):
    name = noise(tmp_path / "noise.npz", n=30)
    bad = undecodable(tmp_path / "bad")
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), "--head", "softmax,ovr", "--epochs", "1",
                 "--device", "cpu", "--no-report", "--ood", f"{name},folder:{bad}",
                 "--test-subset", "200", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for head in ("softmax", "ovr"):
        saved = json.loads(ood_path(run / head, name).read_text())
        assert saved["head"] == head and saved["num_images"] == 30  # --test-subset: at most
        assert f"== far-OOD (head {head}) {name}: 30 test images" in out
        assert f"== far-OOD (head {head}) folder:{bad}: not scored: image" in out
    # the hint names the head's folder, which `unseen ood` takes as it is
    assert main(["ood", str(run / "ovr"), "--dataset", name]) == 0


def test_test_subset_scores_a_seeded_draw_of_the_other_images(digits_run, tmp_path):
    from unseen.farood import subset_index

    images = np.random.default_rng(0).integers(0, 256, (50, 1, 8, 8), dtype=np.uint8)
    name = save_npz_dataset(tmp_path / "set.npz", images)
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    result = evaluate_ood(run, name, limit=12)
    # the same as scoring those 12 images alone
    drawn = images[subset_index(50, 12).numpy()]
    alone = evaluate_ood(run, save_npz_dataset(tmp_path / "drawn.npz", drawn))
    assert result["num_images"] == 12 and result["limit"] == 12
    assert result["scores"]["msp"]["auroc"] == alone["scores"]["msp"]["auroc"]
    assert result["predicted_as"] == alone["predicted_as"]


def test_a_sweep_says_when_runs_scored_different_numbers_of_images(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    opts = SweepOptions(protocol="single", seeds=2)
    name = noise(tmp_path / "noise.npz", n=40)
    monkeypatch.chdir(tmp_path)  # given relative, recorded absolute, as the runs record it
    first = run_sweep(RunConfig(**FAST, ood=("npz:noise.npz",)), opts, out, report=False, log=None)
    assert json.loads((out / "sweep.json").read_text())["base_config"]["ood"] == [name]
    assert first.summary["score_coverage"] == []  # scored on both runs, found by its path
    evaluate = evaluate_ood(first.runs[1].run_dir, name, limit=10)
    from unseen.farood import save_ood

    save_ood(evaluate)
    again = run_sweep(RunConfig(**FAST), opts, out, summary_only=True, report=False, log=None)
    assert again.summary["variants"][0]["far_ood"][name]["num_images"] == [10, 40]
    assert any("scored different numbers of its images (10, 40" in w
               for w in again.summary["score_coverage"])  # fmt: skip


def test_a_sweep_writes_the_report_a_stopped_run_lacks(tmp_path):
    out = tmp_path / "sweep"
    opts = SweepOptions(protocol="single")
    first = run_sweep(RunConfig(**{**FAST, "report": True}), opts, out, report=False, log=None)
    report = first.runs[0].run_dir / "report.html"
    report.unlink()  # as a run stopped between run.json and its report leaves it
    states: list[str] = []
    run_sweep(RunConfig(**{**FAST, "report": True}), opts, out, dry_run=True, log=states.append)
    assert "finished, to complete: its report" in states[0]
    log: list[str] = []
    run_sweep(RunConfig(**{**FAST, "report": True}), opts, out, report=False, log=log.append)
    assert report.is_file() and any(": completed in" in line for line in log)


def test_sigterm_while_scoring_ood_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import signal

    import unseen.farood

    def terminated(*args, **kwargs):  # what SIGTERM does now: the handler installed, called
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), "SIGTERM would end the process without a word"
        handler(signal.SIGTERM, None)

    name = noise(tmp_path / "noise.npz")
    run = tmp_path / "run"
    monkeypatch.setattr(unseen.farood, "evaluate_ood", terminated)
    args = ["run", "--out", str(run), "--epochs", "1", "--device", "cpu", "--no-report"]
    assert main([*args, "--ood", name, "--quiet"]) == 143
    assert f"`unseen run --resume --out {run}` adds what it lacks" in capsys.readouterr().err
    assert is_finished(run) and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # the same while it writes the report (whose failures cost the report only)
    import unseen.report

    monkeypatch.setattr(unseen.report, "build_report", terminated)
    again = ["run", "--out", str(tmp_path / "again"), "--epochs", "1", "--device", "cpu"]
    assert main([*again, "--quiet"]) == 143
    assert "--resume --out" in capsys.readouterr().err
    monkeypatch.undo()
    # SIGTERM while the far-OOD set is read: no `except Exception` takes it for a failed
    # result (it is a KeyboardInterrupt, as Ctrl-C is)
    import unseen.data

    read_npz = unseen.data.read_npz

    def read_then_terminated(*args, **kwargs):  # once the run is trained (checked before)
        if callable(signal.getsignal(signal.SIGTERM)):
            terminated()
        return read_npz(*args, **kwargs)

    monkeypatch.setattr(unseen.data, "read_npz", read_then_terminated)
    third = ["run", "--out", str(tmp_path / "third"), "--epochs", "1", "--device", "cpu"]
    assert main([*third, "--no-report", "--ood", name, "--quiet"]) == 143
    err = capsys.readouterr().err
    assert "--resume --out" in err and "not scored" not in err
    monkeypatch.undo()
    # where SIGTERM has a handler already (a sweep's --jobs worker), that one stays
    from unseen.checkpoint import sigterm_raises

    def own(signum, frame):
        pass

    monkeypatch.setattr(signal, "getsignal", lambda signum: own)
    with sigterm_raises():
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # nothing installed


def test_a_stop_while_scoring_ood_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import unseen.farood

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    name = noise(tmp_path / "noise.npz")
    run = tmp_path / "run"
    monkeypatch.setattr(unseen.farood, "evaluate_ood", stopped)
    args = ["run", "--out", str(run), "--epochs", "1", "--device", "cpu", "--no-report"]
    assert main([*args, "--ood", name, "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"`unseen run --resume --out {run}` adds what it lacks" in err
    seconds = json.loads((run / "run.json").read_text())["seconds"]
    assert is_finished(run) and "ood" not in seconds and "report" not in seconds
    monkeypatch.undo()
    assert main([*args, "--ood", name, "--resume", "--quiet"]) == 0
    assert is_current(run, name)


def test_a_rescore_looks_for_each_dataset_where_its_result_found_it(
    digits_run, tmp_path, monkeypatch
):
    import unseen.farood

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    name = noise(tmp_path / "noise.npz")
    (tmp_path / "root").mkdir()
    assert main(["ood", str(run), "--dataset", name, "--data-root", str(tmp_path / "root")]) == 0
    assert json.loads(ood_path(run, name).read_text())["data_root"] == str(tmp_path / "root")
    roots = []

    def spy(*args, **kwargs):
        roots.append(kwargs["data_root"])
        return evaluate_ood(*args, **kwargs)

    monkeypatch.setattr(unseen.farood, "evaluate_ood", spy)  # rescore scores through it
    assert main(["rescore", str(run), "--no-report", "--quiet"]) == 0
    assert roots == [str(tmp_path / "root")] and is_current(run, name)


def fake_npz_header(path, shape: tuple[int, ...]) -> str:
    """An npz whose array ``x`` says it is uint8 of ``shape`` (its data left out)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue())  # the magic string, then the header
    return f"npz:{path}"


@pytest.mark.parametrize(
    "shape, said",
    [
        ((10**9, 64, 64), "more than this machine's"),
        ((5, 0, 8), "images of no pixels"),
        ((5, 10**6, 10**6), "more than this machine's"),
    ],  # fmt: skip
)
def test_an_npz_set_too_big_or_empty_is_refused_from_its_header(tmp_path, shape, said):
    from unseen.farood import locate_ood

    with pytest.raises(DataError, match=said):
        locate_ood([fake_npz_header(tmp_path / "x.npz", shape)], None)


def test_any_failure_to_score_a_dataset_costs_only_its_result(
    digits_run, tmp_path, monkeypatch, capsys
):
    import unseen.farood

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    good, bad = noise(tmp_path / "good.npz"), noise(tmp_path / "bad.npz")
    real = unseen.farood.evaluate_ood

    def out_of_memory(run_dir, dataset, **kwargs):
        if dataset == bad:
            raise MemoryError("Unable to allocate 931 GiB")
        return real(run_dir, dataset, **kwargs)

    monkeypatch.setattr(unseen.farood, "evaluate_ood", out_of_memory)
    args = ["run", "--out", str(run), "--epochs", "8", "--device", "cpu", "--precision", "fp32"]
    assert main([*args, "--resume", "--ood", f"{bad},{good}", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: not scored: MemoryError: Unable to allocate 931 GiB" in out
    assert is_current(run, good)


def test_a_result_an_earlier_version_saved_is_used_then_replaced(digits_run, tmp_path, capsys):
    from unseen.farood import current_results, legacy_path, save_ood
    from unseen.runfolder import slug

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    name = noise(tmp_path / "noise.npz")
    save_ood(evaluate_ood(run, name))
    old = run / "ood" / f"{slug(name)}.json"  # the name before the hash
    ood_path(run, name).rename(old)
    ood_path(run, name).with_suffix(".npz").unlink()
    assert legacy_path(run, name) == old and is_current(run, name)  # found: not scored again
    # a finished run's --resume with it prints it (not scored again), and so does the report
    args = ["run", "--out", str(run), "--epochs", "8", "--device", "cpu", "--precision", "fp32"]
    assert main([*args, "--resume", "--ood", name, "--quiet", "--no-report"]) == 0
    assert f"== far-OOD {name}: 40 test images" in capsys.readouterr().out
    assert not ood_path(run, name).exists()
    assert main(["rescore", str(run), "--no-report", "--quiet"]) == 0  # scores it again
    assert not old.exists() and ood_path(run, name).is_file()
    assert sorted(p.name for p in (run / "ood").iterdir()) == sorted(
        [ood_path(run, name).name, ood_path(run, name).with_suffix(".npz").name]
    )
    assert list(current_results(run)) == [name]


def test_a_sweep_leaves_a_no_report_run_without_one_and_says_when_one_fails(tmp_path, monkeypatch):
    import unseen.experiment

    out = tmp_path / "sweep"
    opts = SweepOptions(protocol="single")
    first = run_sweep(RunConfig(**FAST), opts, out, report=False, log=None)  # --no-report runs
    again: list[str] = []
    run_sweep(RunConfig(**{**FAST, "report": True}), opts, out, dry_run=True, log=again.append)
    assert again[0].split("  ")[1] == "finished"  # its report: not a thing it lacks
    # a run made with a report, whose report cannot be written: said, not "completed" quietly
    run_dir = first.runs[0].run_dir
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "report": True}))
    monkeypatch.setattr(unseen.experiment, "write_run_report", lambda *a, **k: None)
    log: list[str] = []
    run_sweep(RunConfig(**{**FAST, "report": True}), opts, out, report=False, log=log.append)
    assert any("completed in" in line and "but report not written" in line for line in log)


def test_ctrl_c_while_completing_a_finished_run_says_how_to_go_on(
    digits_run, tmp_path, monkeypatch, capsys
):
    import unseen.farood

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    monkeypatch.setattr(unseen.farood, "evaluate_ood", stopped)
    args = ["run", "--out", str(run), "--epochs", "8", "--device", "cpu", "--precision", "fp32"]
    assert main([*args, "--resume", "--ood", noise(tmp_path / "n.npz"), "--quiet"]) == 130
    assert "the same command adds what it still lacks" in capsys.readouterr().err
