"""Reports (issue 6): plot numbers against hand-computed values, the run report's files, the
``unseen report`` command and comparisons, and the HTML in a real headless browser."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unseen import plots
from unseen.cli import main
from unseen.metrics import auroc
from unseen.report import (
    accuracy_auroc_plot,
    aggregate_runs,
    build_report,
    comparison_warnings,
    find_runs,
    write_comparison,
)

# ----------------------------------------------------------------------------- plot numbers


def test_confusion_counts_match_hand_computed():
    # original classes 0..3; known 0, 1, 3 (network indices 0, 1, 2); unseen 2
    labels = np.array([0, 0, 1, 3, 2, 2])
    predicted = np.array([0, 1, 1, 2, 2, 0])  # network indices -> original 0, 1, 1, 3, 3, 0
    counts = plots.confusion_counts(labels, predicted, known=[0, 1, 3], unseen=[2])
    expected = np.array(
        [
            [1, 1, 0],  # true 0
            [0, 1, 0],  # true 1
            [0, 0, 1],  # true 3
            [1, 0, 1],  # true 2 (unseen): one went to class 0, one to class 3
        ]
    )
    np.testing.assert_array_equal(counts, expected)
    fig = plots.confusion_figure(counts, ["0", "1", "3", "2"], ["0", "1", "3"], num_known=3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "3", "2 (unseen)"]
    cell_texts = sorted(int(t.get_text()) for t in ax.texts)
    assert cell_texts == sorted(expected[expected > 0].tolist())


def test_expected_calibration_error_hand_example():
    # two bins: (0.9, 1.0] holds 0.95 twice with accuracy 1/2 -> gap 0.45;
    # (0.6, 0.7] holds 0.65 twice with accuracy 1 -> gap 0.35; each bin half the images
    conf = np.array([0.95, 0.95, 0.65, 0.65])
    correct = np.array([1, 0, 1, 1])
    assert plots.expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.4)
    b = plots.calibration_bins(conf, correct, n_bins=10)
    assert b.counts.tolist() == [0] * 6 + [2, 0, 0, 2]
    assert b.accuracy[9] == pytest.approx(0.5) and b.accuracy[6] == pytest.approx(1.0)
    assert math.isnan(b.accuracy[0])
    # the ends of [0, 1] fall into the first and last bins
    ends = plots.calibration_bins(np.array([0.0, 1.0]), np.array([1, 1]), n_bins=4)
    assert ends.counts.tolist() == [1, 0, 0, 1]


def test_ece_of_always_wrong_images_is_their_mean_confidence():
    conf = np.random.default_rng(0).uniform(0.2, 1.0, 500)
    ece = plots.expected_calibration_error(conf, np.zeros(500), n_bins=15)
    assert ece == pytest.approx(conf.mean())
    assert math.isnan(plots.expected_calibration_error(np.array([]), np.array([])))


def test_reliability_figure_titles_carry_the_ece():
    conf = np.array([0.95, 0.95, 0.65, 0.65])
    fig = plots.reliability_figure(conf, np.array([1, 0, 1, 1]), np.array([0.8, 0.6]), n_bins=10)
    left, right = fig.axes
    assert "ECE 0.400" in left.get_title()
    assert "ECE 0.700" in right.get_title()  # always wrong: mean confidence


def test_histogram_marks_the_calibrated_threshold():
    rng = np.random.default_rng(1)
    fig = plots.score_histogram(rng.normal(2, 1, 300), rng.normal(0, 1, 40), 0.37, "energy")
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if ln.get_label() == "threshold"]
    assert len(lines) == 1
    assert np.allclose(lines[0].get_xdata(), [0.37, 0.37])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["known (300)", "unseen (40)", "threshold"]


def test_histogram_adds_another_dataset_and_spans_its_scores():
    rng = np.random.default_rng(1)
    far = rng.normal(-6, 1, 500)  # far below both: the axis must reach them
    fig = plots.score_histogram(
        rng.normal(2, 1, 300), rng.normal(0, 1, 40), 0.37, "energy", other=("mnist", far)
    )
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["known (300)", "unseen (40)", "mnist (500)", "threshold"]
    assert ax.get_xlim()[0] <= far.min() and ax.get_title() == (
        "energy: known vs unseen vs mnist test images"
    )


def test_roc_figure_curves_integrate_to_auroc():
    rng = np.random.default_rng(2)
    is_known = np.r_[np.ones(200, bool), np.zeros(60, bool)]
    scores = {"a": np.r_[rng.normal(1, 1, 200), rng.normal(0, 1, 60)], "b": rng.normal(0, 1, 260)}
    fig = plots.roc_figure(scores, is_known)
    curves = {
        ln.get_label().split(" ")[0]: ln
        for ln in fig.axes[0].lines
        if "AUROC" in str(ln.get_label())
    }
    assert set(curves) == {"a", "b"}
    for name, ln in curves.items():
        x, y = ln.get_xdata(), ln.get_ydata()
        assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)
        assert np.trapezoid(y, x) == pytest.approx(auroc(scores[name], is_known), abs=1e-9)


def test_roc_legend_ranks_the_scores_and_no_two_curves_look_alike():
    rng = np.random.default_rng(4)
    is_known = np.r_[np.ones(100, bool), np.zeros(50, bool)]
    scores = {f"s{i}": rng.normal(0, 1, 150) + is_known * i / 8 for i in range(17)}
    fig = plots.roc_figure(scores, is_known)
    lines = [ln for ln in fig.axes[0].lines if "AUROC" in str(ln.get_label())]
    shown = [float(ln.get_label().split("AUROC ")[1].rstrip(")")) for ln in lines]
    assert shown == sorted(shown, reverse=True)  # best first, as in the run's table
    looks = {(ln.get_color(), ln.get_linestyle()) for ln in lines}
    assert len(looks) == 17
    legend = fig.axes[0].get_legend()  # 17 entries: beside the axes, not over the curves
    assert legend.get_bbox_to_anchor().x0 > fig.axes[0].get_window_extent().x1


def test_projection_subsamples_by_class_and_matches_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(400, int), np.ones(100, int), np.full(20, 2)]
    feats = rng.normal(size=(520, 16)) + labels[:, None] * 3.0
    proj = plots.project_features(feats, labels, max_points=104, tsne_points=0)
    assert set(proj.coords) == {"PCA"}
    assert 100 <= len(proj.index) <= 108
    kept = np.bincount(labels[proj.index], minlength=3)
    assert kept.tolist() == [80, 20, 4]  # proportional, every class kept
    ref = PCA(n_components=16).fit(feats).transform(feats[proj.index])[:, :2]
    got = proj.coords["PCA"]
    # principal axes are defined up to sign
    for k in range(2):
        assert np.allclose(np.abs(got[:, k]), np.abs(ref[:, k]), atol=1e-4)

    with_tsne = plots.project_features(feats, labels, max_points=300, tsne_points=60)
    t = with_tsne.coords["t-SNE"]
    assert t.shape == (len(with_tsne.index), 2)
    assert 55 <= np.isfinite(t[:, 0]).sum() <= 65  # only the t-SNE subsample has coordinates
    fig = plots.projection_figure(with_tsne, labels, ["a", "b", "c"], unseen=[2])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a", "b", "c (unseen)"]


@pytest.mark.parametrize("sizes, max_points", [([7, 7, 7], 20), ([3, 3, 3, 3, 1], 12),
                                               ([500, 1, 1, 1], 100)])  # fmt: skip
def test_subsample_never_exceeds_max_points_and_keeps_every_class(sizes, max_points):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    index = plots.subsample_index(labels, max_points)
    assert len(index) == max_points and len(set(index)) == len(index)
    assert set(labels[index]) == set(range(len(sizes)))


@pytest.mark.parametrize("kind", ["constant", "overflowed", "huge"])
def test_projection_of_degenerate_features_is_skipped_not_a_crash(kind):
    # a diverged network: constant features, float16 overflow (inf), or values near float32's
    # limit; t-SNE on the NaN components this gave crashed the process (segfault)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    feats = {
        "constant": np.ones((120, 8)),
        "overflowed": np.where(rng.random((120, 8)) < 0.98, np.inf, 1.0),
        "huge": rng.normal(size=(120, 8)) * 1e37,
    }[kind].astype(np.float32)
    proj = plots.project_features(feats, labels, tsne_points=60)
    for coords in proj.coords.values():
        assert np.isfinite(coords[~np.isnan(coords).all(1)]).all()


def test_features_are_stored_as_float16_only_when_they_fit():
    from unseen.experiment import half_if_it_fits

    assert half_if_it_fits(np.array([1.5, -60000.0], np.float32)).dtype == np.float16
    big = half_if_it_fits(np.array([1.5, 70000.0], np.float32))
    assert big.dtype == np.float32 and big[1] == 70000.0


def test_names_the_font_cannot_draw_give_no_warnings(recwarn):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().set_title("猫 犬 鳥")  # one "Glyph ... missing" warning per character
    assert plots.figure_png(fig)[:4] == b"\x89PNG"
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_tsne_runs_on_the_thread_budget(monkeypatch):
    """The report's t-SNE uses $UNSEEN_NUM_THREADS (or every core) OpenMP threads, not one."""
    import threadpoolctl

    from unseen import report

    seen = []
    real = threadpoolctl.threadpool_limits

    def recording(limits=None, **kw):
        seen.append(limits)
        return real(limits=limits, **kw)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", recording)
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "3")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    feats = rng.normal(size=(60, 8)) + labels[:, None]
    proj, seconds = report._timed_projection(feats, labels, max_points=60, tsne=True)
    assert seen == [3] and "t-SNE" in proj.coords and seconds > 0
    plots.project_features(feats, labels, max_points=60, tsne_points=30, threads=0)
    assert seen[-1] == 1


def test_training_figure_plots_history_columns():
    history = [
        {"epoch": "1", "loss": "2.0", "train_accuracy": "0.3", "val_accuracy": "0.4", "lr": "0.1"},
        {"epoch": "2", "loss": "1.0", "train_accuracy": "0.6", "val_accuracy": "nan", "lr": "0.05"},
    ]
    fig = plots.training_figure(history)
    loss_ax, acc_ax, lr_ax = fig.axes
    assert loss_ax.lines[0].get_ydata().tolist() == [2.0, 1.0]
    assert [ln.get_label() for ln in acc_ax.lines] == ["training (augmented)", "validation"]
    assert lr_ax.lines[0].get_ydata().tolist() == [0.1, 0.05]


def test_training_figure_draws_one_line_per_ovr_separate_network():
    history = [
        {"network": str(k), "epoch": str(e), "loss": str(1.0 / e + k), "train_accuracy": "0.9",
         "val_accuracy": "0.8", "lr": str(0.1 / e)}
        for k in range(3) for e in (1, 2)
    ]  # fmt: skip
    loss_ax, acc_ax, lr_ax = plots.training_figure(history).axes
    assert [ln.get_ydata().tolist() for ln in loss_ax.lines] == [[1.0, 0.5], [2.0, 1.5], [3.0, 2.5]]
    assert all(ln.get_xdata().tolist() == [1.0, 2.0] for ln in loss_ax.lines)  # no zig-zag
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert legend == ["training (augmented)", "validation"]  # once, not once per network
    assert "class k or not" in acc_ax.get_title() and len(lr_ax.lines) == 1


def test_names_with_dollar_signs_are_drawn_literally():
    names = ["$_$", "US$5 vs $10", "$\\frac$"]
    fig = plots.confusion_figure(np.array([[3, 1, 0], [0, 2, 1], [1, 1, 1]]), names, names, 2)
    assert plots.figure_png(fig).startswith(b"\x89PNG")  # mathtext would raise here
    ticks = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in ticks] == [plots.literal(n) for n in names]
    assert not any(t._preprocess_math(t.get_text())[1] for t in ticks)  # none read as math


def test_long_class_names_are_cut_in_figures():
    long = "Boeing 737-800 commercial airliner, livery "  # names that differ at their ends
    names = [long + "A" * 300, long + "B", "owl"]
    fig = plots.confusion_figure(np.array([[1, 0], [0, 1], [1, 1]]), names, names[:2], 2)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    cut = "Boeing 737-800 commerci…"  # 40 characters: the start, an ellipsis, the end
    assert rows == [cut + "A" * 16, cut + "rliner, livery B", "owl (unseen)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == rows[:2]


@pytest.mark.parametrize(
    "names",
    [
        ["Diabetic retinopathy (proliferative)", "Effusion", "Fracture", "Nodule", "Normal"],
        ["Effusion", "Fracture", "Nodule", "Normal", "Pneumonia"],
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"],
    ],
)  # fmt: skip
def test_confusion_matrix_column_names_do_not_overlap(names):
    k = len(names) - 1
    counts = np.arange(len(names) * k).reshape(len(names), k) % 7
    fig = plots.confusion_figure(counts, names, names[:k], k)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = sorted(
        (t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()), key=lambda b: b.x0
    )
    gaps = [b.x0 - a.x1 for a, b in zip(boxes[:-1], boxes[1:], strict=True)]
    assert min(gaps) >= 0, [(b.x0, b.x1) for b in boxes]
    matrix = fig.axes[0].get_window_extent(renderer)
    assert matrix.width > 0.3 * fig.bbox.width and matrix.height > 0.3 * fig.bbox.height


def test_short_column_names_stay_level():
    fig = plots.confusion_figure(np.eye(4, 3, dtype=int), list("0123"), list("012"), 3)
    assert all(t.get_rotation() == 0 for t in fig.axes[0].get_xticklabels())


# ----------------------------------------------------------------------------- the run report

PLOTS = ("roc", "confusion", "reliability", "projection", "training")


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_run_writes_scores_logits_and_features(digits_run):
    d = np.load(digits_run / "scores.npz")
    assert d["logits"].dtype == np.float32 and d["features"].dtype == np.float16
    assert d["logits"].shape == (len(d["label"]), len(_metrics(digits_run)["known_classes"]))
    assert len(d["features"]) == len(d["label"])
    np.testing.assert_array_equal(d["logits"].argmax(1), d["predicted"])


def test_run_report_is_self_contained_and_matches_the_plots(digits_run):
    html_text = (digits_run / "report.html").read_text()
    score_names = list(_metrics(digits_run)["scores"])
    expected = {f"hist_{n}.png" for n in score_names} | {f"{p}.png" for p in PLOTS}
    pngs = {p.name: p.read_bytes() for p in (digits_run / "plots").glob("*.png")}
    assert set(pngs) == expected
    # every image is an embedded PNG equal to the file in plots/; nothing is fetched
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert len(embedded) == len(expected) == html_text.count("<img")
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(pngs.values())
    assert not re.search(r'(src|href)="(https?:|//|plots/)', html_text)
    assert "<link" not in html_text
    # the facts and the score table
    for fact in ("digits", "resnet20", "softmax", "standard", "cpu", "trained from scratch"):
        assert fact in html_text
    m = _metrics(digits_run)
    assert f"{m['num_train']} trained on, {m['num_val']} for validation" in html_text
    table = re.search(r'<table class="scores" id="score-table">.*?</table>', html_text, re.S)
    assert table and all(f"<td>{n}</td>" in table.group(0) for n in score_names)
    # report.md links every PNG by a path relative to the run folder
    md = (digits_run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(link).name for link in links) == sorted(expected)
    assert all((digits_run / link).is_file() for link in links)


def _copy_run(src: Path, dst: Path, seed: int | None = None, **config_changes) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.pt", "detectors.pt"))
    cfg = json.loads((dst / "config.json").read_text())
    if seed is not None:
        cfg["seed"] = seed
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _set_metric(run: Path, score: str, key: str, value: float, closed: float) -> None:
    m = _metrics(run)
    m["scores"][score][key] = value
    m["closed_set_accuracy"] = closed
    (run / "metrics.json").write_text(json.dumps(m))


def test_report_command_rebuilds_a_run_report(digits_run, tmp_path, capsys):
    run = _copy_run(digits_run, tmp_path / "run")
    (run / "report.html").unlink()
    shutil.rmtree(run / "plots")
    assert main(["report", str(run), "--no-tsne"]) == 0
    assert (run / "report.html").is_file() and (run / "plots" / "roc.png").is_file()
    assert "report:" in capsys.readouterr().out
    # without t-SNE, the projection caption names PCA only
    assert "PCA of the penultimate" in (run / "report.html").read_text()


def test_report_command_refuses_unfinished_run(digits_run, tmp_path, capsys):
    run = _copy_run(digits_run, tmp_path / "run")
    (run / "run.json").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a finished run" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(run / "config.json")]) == 2
    assert "config.json is a file, not a folder." in capsys.readouterr().err


def test_a_score_s_own_rule_is_not_called_a_validation_calibration(digits_run, tmp_path):
    run = _copy_run(digits_run, tmp_path / "own")
    m = _metrics(run)
    m["scores"]["energy"]["threshold_from"] = "score"  # as ovr-doc's is
    (run / "metrics.json").write_text(json.dumps(m))
    build_report(run, tsne=False)
    md = (run / "report.md").read_text()
    energy = md.split("**energy: known vs unseen.**")[1][:300]  # the figure's caption
    assert "dashed threshold (the score's own decision rule)" in energy
    msp = md.split("**msp: known vs unseen.**")[1][:300]
    assert "dashed threshold (calibrated on the validation slice)" in msp
    assert "of known validation images; energy: the score's own decision rule" in md


def test_class_names_cannot_break_report_md_or_the_figures(digits_run, tmp_path):
    run = _copy_run(digits_run, tmp_path / "names")
    cfg = json.loads((run / "config.json").read_text())
    cfg["split"]["unseen_names"] = ["nine|9 <b>$_$</b>"]
    classes = cfg["split"]["classes"]
    classes[cfg["split"]["unseen"][0]] = "nine|9 <b>$_$</b>"
    (run / "config.json").write_text(json.dumps(cfg))
    build_report(run, tsne=False)  # the confusion matrix draws the name: no mathtext error
    md = (run / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| unseen classes"))
    assert row == "| unseen classes | nine\\|9 &lt;b>$_$&lt;/b> |"
    assert "<b>" not in md


def test_multi_head_run_gets_a_section_per_head(digits_run, tmp_path):
    top = tmp_path / "multi"
    top.mkdir()
    cfg = json.loads((digits_run / "config.json").read_text())
    heads = ["softmax", "ovr"]
    for head in heads:
        _copy_run(digits_run, top / head, head=[head])
        m = _metrics(top / head)
        m["head"] = head
        (top / head / "metrics.json").write_text(json.dumps(m))
    (top / "config.json").write_text(json.dumps({**cfg, "head": heads}))
    (top / "metrics.json").write_text(json.dumps({"heads": {h: _metrics(top / h) for h in heads}}))
    shutil.copy(digits_run / "run.json", top / "run.json")
    path = build_report(top, tsne=False)
    text = path.read_text()
    assert 'id="head-softmax"' in text and 'id="head-ovr"' in text
    assert text.count('id="score-table"') == 2
    for head in heads:
        assert (top / head / "plots" / "confusion.png").is_file()
        assert (top / head / "report.html").is_file()  # each head folder is a run with a report
    md = (top / "report.md").read_text()
    assert "(ovr/plots/roc.png)" in md and "(softmax/plots/roc.png)" in md
    m = _metrics(digits_run)
    assert f"| training images | {m['num_train']} trained on, {m['num_val']} for" in md
    # a run recorded before the counts were: no row of dashes
    for head in heads:
        old = _metrics(top / head)
        del old["num_train"], old["num_val"]
        (top / head / "metrics.json").write_text(json.dumps(old))
    (top / "metrics.json").write_text(json.dumps({"heads": {h: _metrics(top / h) for h in heads}}))
    assert "training images" not in build_report(top, tsne=False).with_suffix(".md").read_text()
    # a comparison of the multi-head run has one row per head
    rows = aggregate_runs([top])
    assert sorted(r["head"] for r in rows) == sorted(heads)


def test_aggregate_groups_seeds_and_averages(digits_run, tmp_path):
    a = _copy_run(digits_run, tmp_path / "sweep" / "a", seed=0)
    # a resumed GPU run of another seed is still a repetition of the same setting
    b = _copy_run(digits_run, tmp_path / "sweep" / "b", seed=1, out="elsewhere", resume=True,
                  cuda_graphs="on", cudnn_benchmark=True)  # fmt: skip
    c = _copy_run(digits_run, tmp_path / "sweep" / "c", seed=0, lr=0.05)
    _set_metric(a, "msp", "auroc", 0.80, closed=0.90)
    _set_metric(b, "msp", "auroc", 0.90, closed=0.96)
    _set_metric(c, "msp", "auroc", 0.70, closed=0.50)
    rows = aggregate_runs([a, b, c])
    assert len(rows) == 2
    same = next(r for r in rows if r["n_runs"] == 2)
    other = next(r for r in rows if r["n_runs"] == 1)
    assert sorted(same["seeds"]) == [0, 1]
    assert same["scores"]["msp"]["auroc"]["mean"] == pytest.approx(0.85)
    assert same["scores"]["msp"]["auroc"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert same["metrics"]["closed_set_accuracy"]["mean"] == pytest.approx(0.93)
    assert other["scores"]["msp"]["auroc"] == {"mean": 0.70, "std": None, "n": 1}
    assert same["label"] == "lr=0.1" and other["label"] == "lr=0.05"
    # other scores: both runs have the fixture's value, so std 0
    energy = same["scores"]["energy"]["oscr"]
    assert energy["std"] == pytest.approx(0.0) and energy["n"] == 2

    out = write_comparison([a, b, c], tmp_path / "cmp")
    text = out.read_text()
    assert "0.850 ± 0.071" in text and 'id="score-table"' in text
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved[0]["scores"]["msp"]["auroc"]["n"] in (1, 2)
    assert (tmp_path / "cmp" / "comparison.csv").read_text().count("\n") > 10
    assert (tmp_path / "cmp" / "plots" / "compare_auroc.png").is_file()


def test_comparison_plots_closed_set_accuracy_against_auroc_with_its_rank_correlation(
    digits_run, tmp_path
):
    runs = []
    for lr, closed, area in ((0.05, 0.80, 0.70), (0.1, 0.90, 0.85), (0.2, 0.95, 0.80)):
        runs.append(_copy_run(digits_run, tmp_path / f"lr{lr}", lr=lr))
        _set_metric(runs[-1], "msp", "auroc", area, closed=closed)
    assert accuracy_auroc_plot(aggregate_runs(runs[:2]), ["msp"]) is None  # two points
    plot = accuracy_auroc_plot(aggregate_runs(runs), ["msp", "energy"])
    # msp: accuracy ranks 1, 2, 3 and AUROC ranks 1, 3, 2: 1 - 6 * 2 / (3 * 8) = 0.5; energy
    # is the fixture's value in every run (constant): no correlation
    assert "correlation over these 3 configurations: msp 0.50." in plot.caption
    assert "energy" not in plot.caption.split("configurations:")[1]
    write_comparison(runs, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "plots" / "accuracy_vs_auroc.png").is_file()
    assert "msp 0.50" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_comparison_warns_when_a_row_mixes_resolved_settings(digits_run, tmp_path, capsys):
    # device and precision stay 'auto' in config.json: a CPU/fp32 and a GPU/bf16 seed are
    # one row, averaged as the sweep summary averages them, and marked in every output
    a = _copy_run(digits_run, tmp_path / "runs" / "a", seed=0)
    b = _copy_run(digits_run, tmp_path / "runs" / "b", seed=1)
    c = _copy_run(digits_run, tmp_path / "runs" / "c", seed=2)
    m = _metrics(b)
    m.update(device="cuda (NVIDIA H200)", precision="bf16")
    (b / "metrics.json").write_text(json.dumps(m))
    (row,) = aggregate_runs([a, b, c])
    assert row["n_runs"] == 3
    assert row["mixed_settings"]["device"] == ["cpu", "cuda"]
    assert row["mixed_settings"]["precision"][1] == "bf16"
    assert "mixed_settings" not in aggregate_runs([a, c])[0]  # thread counts do not matter
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "device cpu vs cuda" in err
    for name in ("comparison.html", "comparison.md"):
        assert "device cpu vs cuda" in (tmp_path / "cmp" / name).read_text()
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved[0]["mixed_settings"]["device"] == ["cpu", "cuda"]


def test_comparison_warns_when_pretrained_weights_may_know_a_held_out_class(digits_run, tmp_path):
    a = _copy_run(digits_run, tmp_path / "runs" / "a", seed=0)
    b = _copy_run(digits_run, tmp_path / "runs" / "b", seed=1)
    assert aggregate_runs([a, b])[0]["seen_in_pretraining"] == 0
    assert not any("pretraining" in w for w in comparison_warnings(aggregate_runs([a, b])))
    m = _metrics(b)
    m["pretrained_warning"] = "the pretrained run r trained on digits class 9, which ..."
    (b / "metrics.json").write_text(json.dumps(m))
    rows = aggregate_runs([a, b])
    assert rows[0]["seen_in_pretraining"] == 1
    (said,) = [w for w in comparison_warnings(rows) if "pretraining" in w]
    assert "1 of its 2 runs carry a pretraining warning" in said
    write_comparison([a, b], tmp_path / "cmp")
    assert (
        "1 of its 2 runs carry a pretraining warning"
        in (tmp_path / "cmp" / "comparison.md").read_text()
    )


def test_comparison_warns_when_a_row_counts_one_seed_twice(digits_run, tmp_path, capsys):
    a = _copy_run(digits_run, tmp_path / "runs" / "a", seed=0)
    b = _copy_run(digits_run, tmp_path / "runs" / "b", seed=0)  # a copy: not a second seed
    c = _copy_run(digits_run, tmp_path / "runs" / "c", seed=1)
    assert main(["report", str(a), str(b), str(c), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert "averages several runs of seed 0 with the same settings" in err
    assert main(["report", str(a), str(c), "--out", str(tmp_path / "cmp2")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_run_of_an_earlier_version_groups_with_this_one_s_and_its_missing_scores_are_said(
    digits_run, tmp_path, capsys
):
    """An earlier version wrote neither the options added since (they count as their
    defaults: the same configuration) nor their scores (said: fewer runs behind them)."""
    new = _copy_run(digits_run, tmp_path / "runs" / "new", seed=1)
    old = _copy_run(digits_run, tmp_path / "runs" / "old", seed=0)
    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "gen_m"}))
    metrics = _metrics(old)
    name = next(iter(metrics["scores"]))
    del metrics["scores"][name]
    (old / "metrics.json").write_text(json.dumps(metrics))
    (row,) = aggregate_runs([old, new])
    assert row["n_runs"] == 2 and row["scores"][name]["auroc"]["n"] == 1
    assert main(["report", str(old), str(new), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert f"has some scores from fewer of its runs ({name} 1 of 2:" in err
    assert row["computed"][name] == 1


def test_runs_without_unseen_test_images_are_not_said_to_lack_scores(digits_run, tmp_path, capsys):
    # a --rare run that holds nothing out computes every score, with AUROC null
    runs = [_copy_run(digits_run, tmp_path / "runs" / k, seed=i) for i, k in enumerate("ab")]
    metrics = _metrics(runs[0])
    for m in metrics["scores"].values():
        m["auroc"] = None
    (runs[0] / "metrics.json").write_text(json.dumps(metrics))
    (row,) = aggregate_runs(runs)
    assert set(row["computed"].values()) == {2}
    name = next(iter(metrics["scores"]))
    assert row["scores"][name]["auroc"]["n"] == 1
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    assert "fewer of its runs" not in capsys.readouterr().err


def test_runs_recorded_with_relative_and_absolute_paths_group_together(tmp_path, monkeypatch):
    from unseen.report import _grouping_config

    monkeypatch.chdir(tmp_path)
    old = {"dataset": "npz:d.npz", "seed": 0, "pretrained_weights": {"new_head": "a"}}
    new = {"dataset": f"npz:{tmp_path / 'd.npz'}", "seed": 1,
           "pretrained_weights": {"softmax": {"new_head": "a"}}}  # fmt: skip
    assert _grouping_config(old) == _grouping_config(new)


def test_holdout_and_known_giving_the_same_split_are_one_configuration(digits_run, tmp_path):
    cfg = json.loads((digits_run / "config.json").read_text())
    known = [str(c) for c in cfg["split"]["known"]]
    a = _copy_run(digits_run, tmp_path / "a", seed=0)  # --holdout 9 (as the run recorded it)
    b = _copy_run(digits_run, tmp_path / "b", seed=1, holdout=None, known=known[::-1])
    other = _copy_run(digits_run, tmp_path / "c", seed=0, holdout=["8"], known=None)
    split = json.loads((other / "config.json").read_text())
    split["split"]["unseen_names"] = ["8"]
    (other / "config.json").write_text(json.dumps(split))
    rows = aggregate_runs([a, b, other])
    assert sorted(r["n_runs"] for r in rows) == [1, 2]
    assert sorted(r["label"] for r in rows) == ["holdout=8", "holdout=9"]


def test_an_option_left_at_its_default_is_labelled_as_the_command_line_spells_it(
    digits_run, tmp_path
):
    runs = [_copy_run(digits_run, tmp_path / "a", vim_dim=None, pretrained=None),
            _copy_run(digits_run, tmp_path / "b", vim_dim=16, pretrained=str(tmp_path / "p"))]  # fmt: skip
    labels = {r["label"] for r in aggregate_runs(runs)}
    assert labels == {"pretrained=none, vim_dim=auto", f"pretrained={tmp_path / 'p'}, vim_dim=16"}
    # every option's word for None, typed back on the command line, gives None again
    from unseen.config import FIELDS, is_auto, parse_value
    from unseen.report import _short

    for name, f in FIELDS.items():  # those that can be None (out, data_root: a default place)
        if (f.default is None or name == "knn_bank") and name not in ("out", "data_root"):
            value = parse_value(name, _short(None, name))
            assert value is None or is_auto(value), name


def test_folder_of_runs_skips_unfinished_and_writes_inside(digits_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _copy_run(digits_run, sweep / "s0", seed=0)
    _copy_run(digits_run, sweep / "nested" / "s1", seed=1)
    unfinished = _copy_run(digits_run, sweep / "s2", seed=2)
    (unfinished / "run.json").unlink()
    assert [p.name for p in find_runs([sweep])] == ["s1", "s0"]
    assert main(["report", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "s2" in captured.err
    text = (sweep / "comparison" / "comparison.html").read_text()
    assert "2 run(s)" in text
    # a sweep folder's comparison is the one `unseen sweep` writes: its report/ folder
    (sweep / "sweep.json").write_text("{}")
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report" / "comparison.html").is_file()
    # a folder with no runs at all, and an explicit unfinished run, are one-line errors
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), str(sweep)]) == 2
    assert main(["report", str(sweep / "s0"), str(unfinished)]) == 2
    assert "not a finished run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(page: Path, tmp_path: Path) -> str:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
        "--dump-dom", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it with apt-get)"
)
def test_report_renders_in_headless_chromium(digits_run, tmp_path):
    dom = _dump_dom(digits_run / "report.html", tmp_path)
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', body.group(1))
    assert loaded, f"the page's load script did not run: {body.group(0)}"
    ok, total = map(int, loaded.groups())
    assert total == len(list((digits_run / "plots").glob("*.png"))) and ok == total
    assert 'id="score-table"' in dom
    for name in _metrics(digits_run)["scores"]:
        assert f"<td>{name}</td>" in dom


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs it with apt-get)"
)
def test_comparison_renders_in_headless_chromium(digits_run, tmp_path):
    a = _copy_run(digits_run, tmp_path / "a", seed=0)
    b = _copy_run(digits_run, tmp_path / "b", seed=1)
    page = write_comparison([a, b], tmp_path / "cmp")
    dom = _dump_dom(page, tmp_path)
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) != "0"
    assert 'id="score-table"' in dom and 'id="config-table"' in dom


def test_comparison_figure_with_long_labels_draws_without_a_warning():
    # labels longer than the figure is wide left tight_layout no room: matplotlib warned on
    # stderr during `unseen report A B`; the figure is saved with a tight bounding box anyway
    import warnings

    from unseen.plots import comparison_figure, figure_png

    labels = [
        f"dataset=fashion-mnist holdout={'x' * 120} model=resnet18 seed={i}" for i in range(2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = comparison_figure(
            labels, ["msp", "energy"], "AUROC", np.full((2, 2), 0.8), np.zeros((2, 2))
        )
        assert figure_png(fig).startswith(b"\x89PNG")
        # 17 scores: bars told apart by colour and hatch, the legend beside the bars
        names = [f"s{i}" for i in range(17)]
        fig = comparison_figure(labels, names, "AUROC", np.full((2, 17), 0.8), np.zeros((2, 17)))
        assert figure_png(fig).startswith(b"\x89PNG")
        ax = fig.axes[0]
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        looks = {(tuple(c.patches[0].get_facecolor()), c.patches[0].get_hatch()) for c in bars}
        assert len(looks) == 17
        assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1


def test_a_damaged_run_folder_is_one_sentence_not_a_traceback(digits_run, tmp_path, capsys):
    cases = {
        "config": (
            "config.json",
            "[]",
            "is not a run's config.json (it holds no table of options)",
        ),
        "short": ("score_msp", lambda a: a[:5], "holds arrays of different lengths"),
        "nan": ("score_msp", lambda a: np.full_like(a, np.nan), "non-finite values in score_msp"),
    }
    for name, (what, change, message) in cases.items():
        run = tmp_path / name
        shutil.copytree(digits_run, run)
        if what == "config.json":
            (run / what).write_text(change)
        else:
            arrays = dict(np.load(run / "scores.npz"))
            arrays[what] = change(arrays[what])
            np.savez(run / "scores.npz", **arrays)
        assert main(["report", str(run), "--no-tsne"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    # in a folder of runs, the damaged one is named and left out, the others compared
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "cmp")]) == 1
    err = capsys.readouterr().err
    assert f"unseen: skipping {tmp_path / 'config'}: damaged: config.json holds no table\n" in err
    assert len(json.loads((tmp_path / "cmp" / "comparison.json").read_text())[0]["runs"]) == 2


def test_rows_are_labelled_by_options_not_by_the_records_derived_from_them(digits_run, tmp_path):
    a = _copy_run(digits_run, tmp_path / "a", augment="none", augmentation={"preset": "none"})
    b = _copy_run(digits_run, tmp_path / "b", augment="strong", augmentation={"preset": "strong"})
    labels = sorted(r["label"] for r in aggregate_runs([a, b]))
    assert labels == ["augment=none", "augment=strong"]
    # when only a derived record differs, it names the rows
    c = _copy_run(digits_run, tmp_path / "c", augment="none", augmentation={"preset": "other"})
    assert any("augmentation=" in r["label"] for r in aggregate_runs([a, c]))


def test_the_report_headline_says_how_a_rare_class_fared():
    from unseen.report import headline

    rare = {"fraction": 0.05, "train_images": 6, "test_images": 55, "recall": 0.0,
            "precision": float("nan"), "predicted_as": {"9": 27, "8": 28},
            "mean_confidence": 0.684, "confidently_mislabelled": 0.273,
            "auroc_vs_known": {"msp": 0.945}}  # fmt: skip
    text = headline({"closed_set_accuracy": 0.88, "all_test_accuracy": 0.88, "rare": {"3": rare},
                     "data_notes": ["3 of 90 images were resized to 8 x 8"]})  # fmt: skip
    assert text.endswith("Note on the data: 3 of 90 images were resized to 8 x 8.")
    assert "Rare class 3 (fraction 0.05, 6 training images): recall 0.000" in text
    assert "its 55 test images were labelled as: 9 (27), 8 (28)" in text
    assert "27.3% labelled as another class above 0.9" in text and "msp 0.945. Note" in text
    assert "  " not in text and " | " not in text


def test_comparison_has_a_rare_class_table_when_runs_kept_a_class_rare(digits_run, tmp_path):
    runs = []
    for seed, (recall, wrong, went) in enumerate([(0.2, 0.5, {"8": 30, "3": 10}),
                                                  (0.4, 0.7, {"8": 20, "3": 20})]):  # fmt: skip
        run = _copy_run(digits_run, tmp_path / f"r{seed}", seed=seed, rare=["3:0.1"])
        m = _metrics(run)
        m["rare"] = {"3": {"fraction": 0.1, "known": True, "train_images": 12, "test_images": 40,
                           "recall": recall, "precision": 0.9, "predicted_as": went,
                           "mean_confidence": 0.8, "confidently_mislabelled": wrong,
                           "auroc_vs_known": {"msp": 0.6}}}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(m))
        runs.append(run)
    plain = _copy_run(digits_run, tmp_path / "plain", seed=0)
    (row,) = [r for r in aggregate_runs([*runs, plain]) if "rare" in r]
    assert row["rare"]["3"]["recall"]["mean"] == pytest.approx(0.3)
    assert row["rare"]["3"]["absorbed_by"] == {"class": "8", "share": pytest.approx(50 / 80)}
    write_comparison([*runs, plain], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| ") and "| 3 |" in ln)
    assert "0.300 ± 0.141" in line and "0.600 ± 0.141" in line and "8 (62%)" in line
    assert 'id="rare-table"' in (tmp_path / "cmp" / "comparison.html").read_text()
    assert "rare:3:confidently_mislabelled" in (tmp_path / "cmp" / "comparison.csv").read_text()
    # runs without rare classes: no such table
    write_comparison([plain], tmp_path / "cmp2")
    assert "Rare classes" not in (tmp_path / "cmp2" / "comparison.md").read_text()


def test_a_histogram_without_unseen_images_does_not_promise_them():
    fig = plots.score_histogram(np.array([0.2, 0.5, 0.9]), np.array([]), 0.3, "msp")
    assert fig.axes[0].get_title() == "msp: known test images"
    fig = plots.score_histogram(np.array([0.2, 0.9]), np.array([0.1]), 0.3, "msp")
    assert fig.axes[0].get_title() == "msp: known vs unseen test images"


def test_a_rare_run_report_plots_the_rare_class_against_the_other_known_ones(tmp_path):
    from unseen.config import RunConfig
    from unseen.experiment import run_experiment
    from unseen.report import build_report

    out = tmp_path / "rare"
    cfg = RunConfig(out=str(out), rare=("3:0.05",), epochs=2, device="cpu", precision="fp32",
                    scores=("msp",), report=False)  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    build_report(out, tsne=False)
    png = out / "plots" / "hist_rare_3_msp.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    assert "msp: rare class 3 vs the other known classes" in md
    auroc = json.loads((out / "metrics.json").read_text())["rare"]["3"]["auroc_vs_known"]["msp"]
    assert f"AUROC of the others against it: {auroc:.3f}" in md
    assert "msp: known test images" in md  # nothing unseen: the score histogram says so


def test_runs_that_computed_other_scores_share_one_row(tmp_path):
    """The score list changes neither the network nor any score's values: two runs of one
    configuration, one of them with energy as well (a sweep rescored, then continued), are one
    row, and `computed` says how many of its runs have each score."""
    from test_robustness import run

    run(tmp_path / "a", scores=("msp",))
    run(tmp_path / "b", scores=("msp", "energy"), seed=1)
    (row,) = aggregate_runs([tmp_path / "a", tmp_path / "b"])
    assert row["n_runs"] == 2 and row["computed"] == {"msp": 2, "energy": 1}
    assert row["scores"]["msp"]["auroc"]["n"] == 2 and row["scores"]["energy"]["auroc"]["n"] == 1
