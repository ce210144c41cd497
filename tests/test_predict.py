"""`unseen predict` and `unseen.load`: a digits run with one digit held out, used on new files.

The run trains for 20 epochs on the bundled digits (a few seconds on a CPU). Its test split
(540 images, 54 per digit) is written as PNG files and fed back through the CLI and the API.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unseen
from unseen.cli import main
from unseen.config import FIELDS, RunConfig
from unseen.data import load_dataset
from unseen.errors import InputError, UnseenError
from unseen.evaluate import forward_pass
from unseen.metrics import calibrate_threshold
from unseen.predict import (
    Predictor,
    convert_channels,
    load,
    predict_items,
    resize_images,
    summary_line,
)

HOLDOUT = "9"
EPOCHS = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from unseen.experiment import run_experiment

    out = tmp_path_factory.mktemp("predict") / "run"
    extra = {"report": False} if "report" in FIELDS else {}
    cfg = RunConfig(
        out=str(out), epochs=EPOCHS, holdout=(HOLDOUT,), device="cpu", precision="fp32", **extra
    )
    run_experiment(cfg, progress=False, log=None)
    return out


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, digits) -> dict[str, list[Path]]:
    """The digits test split as PNG files: known/<i>_<digit>.png and unseen/<i>_<digit>.png."""
    root = tmp_path_factory.mktemp("pngs")
    out: dict[str, list[Path]] = {"known": [], "unseen": []}
    for i, (x, y) in enumerate(zip(digits.x_test, digits.y_test, strict=True)):
        kind = "unseen" if str(int(y)) == HOLDOUT else "known"
        path = root / kind / f"{i:04d}_{int(y)}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(x[0].numpy(), mode="L").save(path)
        out[kind].append(path)
    return out


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return load(run_dir, device="cpu")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ----------------------------------------------------------------------------- the CLI on PNG files


def test_held_out_digits_come_back_unknown_and_known_acceptance_near_target(
    capsys, run_dir, pngs, tmp_path
):
    out = tmp_path / "pred.csv"
    rc, stdout, _ = cli(capsys, run_dir, pngs["known"][0].parent, pngs["unseen"][0].parent,
                        "--output", out)  # fmt: skip
    assert rc == 0 and "wrote 540 row(s)" in stdout
    rows = read_csv(out.read_text())
    assert len(rows) == 540 and all(r["error"] == "" for r in rows)
    unseen_rows = [r for r in rows if "/unseen/" in r["input"]]
    known_rows = [r for r in rows if "/known/" in r["input"]]
    assert len(unseen_rows) == 54 and len(known_rows) == 486
    rejected = np.mean([r["prediction"] == "unknown" for r in unseen_rows])
    accepted = np.mean([r["prediction"] != "unknown" for r in known_rows])
    # Measured: 0.70 of the held-out 9s rejected (energy); a proportion over 54 images has a
    # standard error of ~0.06, so 0.5 leaves a margin of more than three of them.
    assert rejected > 0.5, rejected
    # The threshold accepts 95% of ~113 validation images: the acceptance it gives on the
    # population has a standard deviation of sqrt(.95 * .05 / 113) ~ 0.02, the 486 test images
    # add ~0.01; 0.85 is more than 4 combined standard deviations below 0.95.
    assert 0.85 <= accepted <= 1.0, accepted
    # accepted images get their known class, as the closed-set argmax
    for r in known_rows:
        if r["prediction"] != "unknown":
            assert r["prediction"] == r["closest"] and r["class_index"] != "-1"
    assert {r["threshold"] for r in rows} == {rows[0]["threshold"]}


def test_cli_scores_equal_the_run_s_own_test_scores(capsys, run_dir, pngs, tmp_path):
    """PNG files are lossless and 8x8: the scores must be the ones the run computed."""
    rc, stdout, _ = cli(capsys, run_dir, *pngs["known"][:40], *pngs["unseen"][:10],
                        "--format", "csv", "--score", "msp")  # fmt: skip
    assert rc == 0
    rows = read_csv(stdout)
    stored = np.load(run_dir / "scores.npz")
    index = [int(Path(r["input"]).name.split("_")[0]) for r in rows]
    np.testing.assert_allclose(
        [float(r["score"]) for r in rows], stored["score_msp"][index], rtol=1e-4, atol=1e-5
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert float(rows[0]["threshold"]) == pytest.approx(metrics["scores"]["msp"]["threshold"])
    names = metrics["known_classes"]
    assert [r["closest"] for r in rows] == [names[i] for i in stored["predicted"][index]]


def test_corrupt_file_gets_its_own_row_and_the_rest_go_on(capsys, run_dir, pngs, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pngs["known"][0].read_bytes()[:30])
    rc, stdout, err = cli(capsys, run_dir, pngs["known"][0], bad, truncated, tmp_path / "missing.png",
                          "--format", "json")  # fmt: skip
    assert rc == 0
    rows = json.loads(stdout)["predictions"]
    assert [r["error"] is None for r in rows] == [True, False, False, False]
    assert rows[1]["prediction"] is None and "could not be read" in rows[1]["error"]
    assert "does not exist" in rows[3]["error"]
    assert "3 row(s) could not be read" in err

    rc, stdout, err = cli(capsys, run_dir, bad, tmp_path / "missing.png")
    assert rc == 2
    assert err.strip().startswith("unseen: error: none of the 2 input(s) could be read")
    assert "Traceback" not in err
    assert "broken.png" in stdout  # the rows still say why, file by file


def test_unusable_arrays_get_their_own_rows(capsys, run_dir, pngs, tmp_path):
    np.savez(tmp_path / "wide.npz", x=np.full((1, 8, 8), 100, np.uint16))  # fine: 0..255
    np.savez(tmp_path / "empty.npz", x=np.zeros((2, 0, 8), np.uint8))
    rc, stdout, _ = cli(capsys, run_dir, tmp_path / "wide.npz", tmp_path / "empty.npz",
                        pngs["known"][0], "--format", "json")  # fmt: skip
    assert rc == 0
    rows = json.loads(stdout)["predictions"]
    assert [r["error"] is None for r in rows] == [True, False, False, True]  # two empty images
    assert "no pixels" in rows[1]["error"] and "no pixels" in rows[2]["error"]


def test_an_npz_without_images_gets_an_error_row(capsys, run_dir, pngs, tmp_path):
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 8, 8), np.uint8))
    rc, stdout, _ = cli(capsys, run_dir, tmp_path / "none.npz", "--format", "json")
    assert rc == 2
    (row,) = json.loads(stdout)["predictions"]
    assert "holds no images" in row["error"]


def test_folders_skip_hidden_entries_as_folder_datasets_do(capsys, run_dir, pngs, tmp_path):
    (tmp_path / "imgs" / ".ipynb_checkpoints").mkdir(parents=True)
    shutil.copy(pngs["known"][0], tmp_path / "imgs" / "a.png")
    shutil.copy(pngs["known"][1], tmp_path / "imgs" / ".hidden.png")
    shutil.copy(pngs["known"][2], tmp_path / "imgs" / ".ipynb_checkpoints" / "b.png")
    rc, stdout, err = cli(capsys, run_dir, tmp_path / "imgs", "--format", "csv")
    assert rc == 0
    assert [r["input"] for r in read_csv(stdout)] == [str(tmp_path / "imgs" / "a.png")]
    assert "not read" not in err  # hidden files are not counted as skipped
    # files of other types are left out, and said so on stderr (stdout stays the CSV)
    for name in ("x.gif", "y.gif", "z.jfif"):
        shutil.copy(pngs["known"][0], tmp_path / "imgs" / name)
    rc, again, err = cli(capsys, run_dir, tmp_path / "imgs", "--format", "csv")
    assert rc == 0 and again == stdout
    assert "note: 3 file(s) in the folders given were not read (2 .gif, 1 .jfif)" in err


def test_folders_follow_links_as_folder_datasets_do(capsys, run_dir, pngs, tmp_path):
    (tmp_path / "real" / "a").mkdir(parents=True)
    for f in pngs["known"][:3]:
        shutil.copy(f, tmp_path / "real" / "a" / f.name)
    (tmp_path / "tree" / "a").mkdir(parents=True)
    shutil.copy(pngs["known"][3], tmp_path / "tree" / "a" / "own.png")
    (tmp_path / "tree" / "linked").symlink_to(tmp_path / "real" / "a")
    (tmp_path / "tree" / "a" / "loop").symlink_to(tmp_path / "tree")  # searched once
    (tmp_path / "tree" / "a" / "gone.png").symlink_to(tmp_path / "missing.png")
    rc, stdout, _ = cli(capsys, run_dir, tmp_path / "tree", "--format", "csv")
    rows = read_csv(stdout)
    assert rc == 0
    names = [Path(r["input"]).relative_to(tmp_path / "tree").as_posix() for r in rows]
    linked = [f"linked/{f.name}" for f in pngs["known"][:3]]
    assert names == ["a/gone.png", "a/own.png", *linked]
    assert "FileNotFoundError" in rows[0]["error"] and not any(r["error"] for r in rows[1:])
    # a folder:PATH dataset lists them through the same function, in the same order
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "test").mkdir()
    (tmp_path / "ds" / "train" / "tree").symlink_to(tmp_path / "tree")
    (tmp_path / "ds" / "test" / "tree").symlink_to(tmp_path / "real")
    (tmp_path / "tree" / "a" / "gone.png").unlink()
    data = load_dataset(f"folder:{tmp_path / 'ds'}")
    assert len(data.x_train) == 4 and len(data.x_test) == 3  # the loop searched once
    files = [Path(r["input"]) for r in rows[1:]]
    assert torch.equal(
        data.x_train,
        torch.cat([torch.from_numpy(np.array(Image.open(f)))[None, None] for f in files]),
    )


def test_an_npz_of_one_unbatched_colour_image_is_refused_not_sliced(capsys, run_dir, tmp_path):
    np.savez(tmp_path / "one.npz", x=np.zeros((8, 8, 3), np.uint8))
    rc, stdout, _ = cli(capsys, run_dir, tmp_path / "one.npz", "--format", "json")
    (row,) = json.loads(stdout)["predictions"]
    assert rc == 2 and "looks like one H x W x C image" in row["error"]
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 8, 8, 3), np.uint8))
    rc, stdout, _ = cli(capsys, run_dir, tmp_path / "one.npz", "--format", "json")
    assert rc == 0 and len(json.loads(stdout)["predictions"]) == 1


def test_closed_stdout_or_stderr_is_no_traceback(run_dir, pngs, tmp_path):
    import subprocess

    def predict(closed: int, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "unseen", "predict", str(run_dir), str(pngs["known"][0])]
        other = {1: {"stderr": subprocess.PIPE}, 2: {"stdout": subprocess.PIPE}}[closed]
        return subprocess.run(  # the shell's `>&-` (closed 1) and `2>&-` (closed 2)
            [*cmd, *extra], **other, preexec_fn=lambda: os.close(closed), text=True
        )

    # stderr closed: the predictions still come; stdout closed: nowhere to write them
    proc = predict(2)
    assert proc.returncode == 0 and "1 image(s)" in proc.stdout
    proc = predict(1)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "unseen: error: standard output is closed: give --output FILE for the predictions."
    )
    proc = predict(1, "--output", str(tmp_path / "p.csv"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert len(read_csv((tmp_path / "p.csv").read_text())) == 1


def test_an_output_the_system_refuses_is_named_as_given(capsys, run_dir, pngs):
    # /proc takes no new files: the error names the file asked for, not a temporary file
    rc, _, err = cli(capsys, run_dir, pngs["known"][0], "--output", "/proc/x.csv")
    assert rc == 2 and err.strip() == "unseen: error: /proc/x.csv: No such file or directory."


def test_an_output_that_cannot_be_written_fails_before_any_image(
    capsys, run_dir, pngs, tmp_path, monkeypatch
):
    import unseen.predict as predict

    monkeypatch.setattr(predict, "predict_items", lambda *a, **k: pytest.fail("predicted"))
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "x.csv"
    rc, _, err = cli(capsys, run_dir, pngs["known"][0], "--output", out)
    assert rc == 2 and err.strip() == f"unseen: error: {tmp_path / 'file'}: Not a directory."
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_output_naming_a_folder_is_one_clear_error(capsys, run_dir, pngs, tmp_path):
    rc, stdout, err = cli(capsys, run_dir, pngs["known"][0], "--output", tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert f"--output {tmp_path} is a folder; give a file name" in err
    assert list(tmp_path.iterdir()) == []


def test_npz_input_matches_the_png_files(capsys, run_dir, pngs, digits, tmp_path):
    x = digits.x_test[:30, 0].numpy()
    first_pngs = sorted(pngs["known"] + pngs["unseen"], key=lambda p: p.name)[:30]
    rc, stdout, _ = cli(capsys, run_dir, *first_pngs, "--format", "csv")
    png_rows = read_csv(stdout)
    # every layout an npz:PATH dataset accepts, N x C x H x W included
    for key, array in {"x": x, "images": x[..., None], "x_test": x[:, None]}.items():
        path = tmp_path / f"{key}.npz"
        np.savez(path, **{key: array, "y": np.zeros(len(x))})
        rc, stdout, _ = cli(capsys, run_dir, path, "--format", "csv")
        assert rc == 0
        npz_rows = read_csv(stdout)
        assert [r["input"] for r in npz_rows] == [f"{path}[{i}]" for i in range(30)]
        assert [r["prediction"] for r in npz_rows] == [r["prediction"] for r in png_rows]
        assert [r["score"] for r in npz_rows] == [r["score"] for r in png_rows]

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=x)
    rc, stdout, _ = cli(capsys, run_dir, wrong, pngs["known"][0], "--format", "csv")
    rows = read_csv(stdout)
    assert rc == 0 and "no array named x, images, x_test" in rows[0]["error"]
    assert rows[1]["error"] == ""


def test_json_csv_and_table_formats_agree(capsys, run_dir, pngs, tmp_path):
    files = pngs["known"][:5] + pngs["unseen"][:5]
    _, csv_text, _ = cli(capsys, run_dir, *files, "--format", "csv")
    _, json_text, _ = cli(capsys, run_dir, *files, "--format", "json")
    rc, table_text, _ = cli(capsys, run_dir, *files)
    doc = json.loads(json_text)
    rows = read_csv(csv_text)
    assert rc == 0 and doc["score"] == "energy" and doc["known_acceptance"] == 0.95
    assert doc["classes"] == [str(d) for d in range(10) if str(d) != HOLDOUT]
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in doc["predictions"]]
    assert [float(r["score"]) for r in rows] == [r["score"] for r in doc["predictions"]]
    assert all(r["threshold"] == doc["threshold"] for r in doc["predictions"])
    lines = table_text.splitlines()
    assert lines[0].split()[:4] == ["input", "prediction", "score", "threshold"]
    assert "10 image(s)" in table_text
    # --output FILE picks the format from its suffix
    out = tmp_path / "p.json"
    assert cli(capsys, run_dir, *files, "--output", out)[0] == 0
    assert json.loads(out.read_text())["predictions"] == doc["predictions"]


# ----------------------------------------------------------------------------- thresholds


def test_known_acceptance_recalibration_is_monotonic(predictor, run_dir, digits):
    val = np.load(run_dir / "scores.npz")["val_score_energy"]
    test_scores = predictor.scores(digits.x_test)
    thresholds, accepted = [], []
    for f in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        p = predictor.with_options(known_acceptance=f)
        assert p.threshold == calibrate_threshold(val, f)
        assert np.mean(val >= p.threshold) >= f  # the definition, on the validation images
        thresholds.append(p.threshold)
        accepted.append(int((p.predict(digits.x_test) >= 0).sum()))
        assert accepted[-1] == int((test_scores >= p.threshold).sum())
    assert thresholds == sorted(thresholds, reverse=True)
    assert accepted == sorted(accepted)
    assert accepted[0] < accepted[-1]
    assert predictor.threshold == calibrate_threshold(val, 0.95)  # the original is unchanged


def test_options_without_a_score_keep_the_chosen_score(run_dir):
    val = np.load(run_dir / "scores.npz")["val_score_msp"]
    p = load(run_dir, device="cpu", score="msp")
    copy = p.with_options(known_acceptance=0.8)
    assert copy.score_name == "msp" and copy.threshold == calibrate_threshold(val, 0.8)
    assert p.with_options(threshold=0.5).score_name == "msp"
    assert p.configure(known_acceptance=0.9) is p and p.score_name == "msp"
    assert p.with_options(score="energy").score_name == "energy"
    assert load(run_dir, device="cpu").score_name == "energy"  # the run's default


def test_options_keep_a_given_threshold_while_the_score_stays(run_dir):
    p = load(run_dir, device="cpu", score="msp", threshold=0.75)
    same = p.with_options()
    assert (same.threshold, same.threshold_source, same.known_acceptance) == (0.75, "given", None)
    assert p.with_options(known_acceptance=0.8).threshold != 0.75  # asked for: recalibrated
    other = p.with_options(score="energy")  # another scale: calibrated, at the run's rate
    val = np.load(run_dir / "scores.npz")["val_score_energy"]
    assert other.threshold == calibrate_threshold(val, other.run_known_acceptance)


def test_threshold_override_and_cli_recalibration(capsys, run_dir, pngs):
    files = pngs["known"][:20] + pngs["unseen"][:20]
    counts = {}
    for flag in ("--threshold=-1e9", "--threshold=1e9", "--known-acceptance=0.6",
                 "--known-acceptance=0.99"):  # fmt: skip
        rc, stdout, _ = cli(capsys, run_dir, *files, "--format", "json", flag)
        assert rc == 0
        doc = json.loads(stdout)
        option, value = flag.split("=")
        counts[value] = sum(r["prediction"] == "unknown" for r in doc["predictions"])
        if option == "--threshold":
            assert doc["threshold"] == float(value) and doc["known_acceptance"] is None
        else:
            assert doc["known_acceptance"] == float(value)
    assert counts["-1e9"] == 0 and counts["1e9"] == 40
    assert counts["0.6"] >= counts["0.99"]
    # a negative threshold in exponent notation, as a separate argument, is a value
    rc, stdout, err = cli(capsys, run_dir, *files[:2], "--format", "json", "--threshold", "-1e9")
    assert rc == 0 and json.loads(stdout)["threshold"] == -1e9, err
    rc, _, err = cli(capsys, run_dir, *files, "--threshold", "1", "--known-acceptance", "0.9")
    assert rc == 2 and "not allowed with argument" in err
    rc, _, err = cli(capsys, run_dir, *files, "--known-acceptance", "1.5")
    assert rc == 2


def test_score_choice(capsys, predictor, run_dir, pngs):
    assert predictor.score_name == "energy"
    assert set(predictor.detectors) == {"msp", "maxlogit", "energy", "entropy"}
    rc, _, err = cli(capsys, run_dir, pngs["known"][0], "--score", "nope")
    assert rc == 2 and "score 'nope' is not available" in err and "energy" in err


# ----------------------------------------------------------------------------- the Python API


def test_odin_runs_the_predictor_s_batch_size(run_dir, digits, monkeypatch):
    import unseen.detectors as detectors
    from unseen.scores import FitContext, create_score

    seen = []
    real = detectors.odin_scores
    monkeypatch.setattr(
        detectors, "odin_scores", lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k)
    )
    scores = {}
    for batch_size in (7, 256):
        p = load(run_dir, device="cpu", batch_size=batch_size)
        p.detectors["odin"] = create_score("odin").fit(FitContext())
        scores[batch_size] = p.with_options(score="odin", threshold=0.5).scores(digits.x_test[:20])
    assert seen == [7, 256]
    np.testing.assert_allclose(scores[7], scores[256], rtol=1e-5)


def test_api_gives_identical_results_for_tensors_arrays_and_pil(predictor, digits):
    x = digits.x_test[:64]  # uint8 N x 1 x 8 x 8
    expected = predictor.predict(x)
    assert expected.dtype == np.int64 and expected.shape == (64,)
    assert set(expected.tolist()) <= set(range(-1, len(predictor.classes)))
    arr = x[:, 0].numpy()
    variants = {
        "tensor N1HW": x,
        "float tensor": x.float() / 255,
        "array NHW": arr,
        "array NHWC": arr[..., None],
        "float array": arr.astype(np.float32) / 255,
        "list of arrays": list(arr),
        "list of tensors": list(x),
        "list of PIL": [Image.fromarray(a, mode="L") for a in arr],
        "list of RGB PIL": [Image.fromarray(a, mode="L").convert("RGB") for a in arr],
    }
    for name, images in variants.items():
        np.testing.assert_array_equal(predictor.predict(images), expected, err_msg=name)
    single = predictor.predict(Image.fromarray(arr[3], mode="L"))
    assert single.tolist() == [expected[3]]
    names = predictor.predict_names(x)
    assert names == [predictor.classes[i] if i >= 0 else "unknown" for i in expected]
    assert predictor.classes == tuple(str(d) for d in range(10) if str(d) != HOLDOUT)
    assert predictor.predict([]).shape == (0,)
    # scores: the chosen one, equal to the run's stored test scores
    stored = np.load(predictor.run_dir / "scores.npz")
    np.testing.assert_allclose(predictor.scores(digits.x_test), stored["score_energy"], rtol=1e-4)
    every = predictor.all_scores(x)
    np.testing.assert_allclose(every["msp"], stored["score_msp"][:64], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scores_do_not_depend_on_the_memory_layout_of_the_same_pixels(run_dir, precision):
    # one-channel pixels from NumPy (N x 8 x 8 x 1 viewed as N x 1 x 8 x 8) and the same
    # pixels in NCHW strides are both "contiguous", yet the CPU picked other conv kernels
    x = load_dataset("digits").x_test[:64]
    nchw = torch.empty(x.shape, dtype=x.dtype).copy_(x)
    assert torch.equal(x, nchw) and x.stride() != nchw.stride()
    model = load(run_dir, device="cpu").model
    a, b = (forward_pass(model, t, "cpu", precision) for t in (x, nchw))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)


def test_api_reads_image_files_like_the_cli(capsys, predictor, run_dir, pngs, tmp_path):
    files = pngs["known"][:20] + pngs["unseen"][:5]
    by_path = predictor.predict(files)  # Path objects
    assert by_path.tolist() == predictor.predict([str(f) for f in files]).tolist()
    assert by_path.tolist() == predictor.predict([Image.open(f) for f in files]).tolist()
    assert predictor.predict(str(files[0])).tolist() == by_path[:1].tolist()
    code, out, _ = cli(capsys, run_dir, *files, "--format", "json")
    assert code == 0
    rows = json.loads(out)["predictions"]
    assert [r["prediction"] for r in rows] == predictor.predict_names(files)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    for bad, message in [
        (tmp_path / "missing.png", "is not an image file (it does not exist or is a folder)"),
        (tmp_path, "is not an image file"),
        (not_an_image, "could not be read as an image"),
    ]:
        with pytest.raises(UnseenError, match=re.escape(message)):
            predictor.predict([files[0], bad])


def test_cli_counts_images_on_a_terminal_only(capsys, request, run_dir, pngs):
    files = pngs["known"][:30]
    code, plain_out, plain_err = cli(capsys, run_dir, *files, "--format", "csv")
    assert code == 0 and "predicting" not in plain_err

    terminal = request.getfixturevalue("terminal")
    code, out, _ = cli(capsys, run_dir, *files, "--format", "csv")
    assert code == 0 and out == plain_out  # the bar goes to stderr, the rows are unchanged
    assert "predicting" in terminal.getvalue() and "img" in terminal.getvalue()


def test_load_refuses_bad_arguments_with_one_clear_error(run_dir, tmp_path):
    for bad in (0, True, 2.0):  # mistakes in Python are ValueErrors too
        with pytest.raises(InputError, match="batch_size must be a whole number of at least 1"):
            load(run_dir, batch_size=bad)
    assert load(run_dir, batch_size=np.int64(7), device="cpu").batch_size == 7
    p = load(run_dir, device="cpu")
    with pytest.raises(ValueError, match="not available"):
        p.with_options(score="nope")
    with pytest.raises(ValueError, match="float images must lie in"):
        p.predict(np.full((8, 8), 3.0, np.float32))
    with pytest.raises(UnseenError, match="device 'tpu' is not known; choose one of"):
        load(run_dir, device="tpu")
    with pytest.raises(UnseenError, match="is a file, not a folder; give the run folder"):
        load(run_dir / "model.pt")
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(UnseenError, match="known acceptance must be above 0 and at most 1"):
            load(run_dir, known_acceptance=bad, device="cpu")
    with pytest.raises(TypeError, match="load takes a run folder's path .* not NoneType"):
        load(None)
    for bad in ("1", [0.5], None.__class__):  # a threshold that is no number: one sentence
        with pytest.raises(InputError, match="the threshold must be a number, not"):
            p.with_options(threshold=bad)
    assert p.with_options(threshold=np.float32(0.25)).threshold == 0.25  # a NumPy number is one


def test_unseen_load_is_the_lazy_entry_point(run_dir):
    p = unseen.load(run_dir, score="msp", known_acceptance=0.9, device="cpu")
    assert isinstance(p, Predictor) and p.score_name == "msp" and p.known_acceptance == 0.9
    assert "msp" in repr(p)


def test_grey_and_alpha_files_are_one_image_each(capsys, predictor, run_dir, pngs, tmp_path):
    # a PIL "LA" image (grey + alpha) used to be read as H one-row images, and every file
    # after it in the batch got another image's result
    grey = [np.array(Image.open(f)) for f in pngs["known"][:3]]
    files = []
    for i, g in enumerate(grey):
        la = tmp_path / f"{i}_la.png"
        Image.fromarray(np.stack([g, np.full_like(g, 255)], axis=2), mode="LA").save(la)
        files += [la, pngs["known"][i]]
    assert Image.open(files[0]).mode == "LA"
    assert predictor.prepare(Image.open(files[0])).shape == (1, 1, 8, 8)
    scores = predictor.scores(files)
    assert len(scores) == 6
    assert np.array_equal(scores[0::2], scores[1::2])  # alpha dropped: the grey image itself
    code, out, _ = cli(capsys, run_dir, *files, "--format", "json")
    rows = json.loads(out)["predictions"]
    assert code == 0 and len(rows) == 6
    assert [r["score"] for r in rows[0::2]] == [r["score"] for r in rows[1::2]]


def test_folders_read_the_same_file_types_as_folder_datasets(tmp_path):
    from unseen.data import IMAGE_EXTENSIONS, image_files

    for ext in IMAGE_EXTENSIONS:
        path = tmp_path / "a" / f"x{ext.upper() if ext == '.gif' else ext}"
        path.parent.mkdir(exist_ok=True)
        path.touch()
    (tmp_path / "a" / "notes.txt").touch()
    others: list[Path] = []
    listed = {p.suffix.lower() for p in image_files(tmp_path, others)}
    assert listed == set(IMAGE_EXTENSIONS) and others == [tmp_path / "a" / "notes.txt"]


def test_input_conversion_channels_size_and_range(predictor):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pil = Image.fromarray(rgb, mode="RGB")
    # RGB -> L as PIL does it
    expected = np.array(pil.convert("L"))
    assert np.array_equal(predictor.prepare(pil)[0, 0].numpy(), expected)
    assert np.array_equal(predictor.prepare(rgb)[0, 0].numpy(), expected)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(predictor.prepare(rgba)[0, 0].numpy(), expected)
    # L -> RGB repeats the channel
    gray = torch.from_numpy(rng.integers(0, 256, (2, 1, 5, 5), dtype=np.uint8))
    assert torch.equal(convert_channels(gray, 3), gray.repeat(1, 3, 1, 1))
    # any size is resized to the training size (8 x 8); compare with PIL's own resampling
    big = rng.integers(0, 256, (32, 24), dtype=np.uint8)
    ref = np.array(Image.fromarray(big).resize((8, 8), Image.BILINEAR), dtype=int)
    got = predictor.prepare(big)
    assert got.shape == (1, 1, 8, 8) and got.dtype == torch.uint8
    assert np.abs(got[0, 0].numpy().astype(int) - ref).max() <= 1
    assert resize_images(gray, (5, 5)) is gray
    # floats must be in [0, 1]; integers in 0..255
    with pytest.raises(UnseenError, match=r"\[0, 1\]"):
        predictor.prepare(np.full((8, 8), 200.0))
    with pytest.raises(UnseenError, match="0..255"):
        predictor.prepare(np.full((8, 8), 300, dtype=np.int64))
    with pytest.raises(UnseenError, match="not understood"):
        predictor.prepare(np.zeros((2, 8, 8, 7), np.uint8))
    with pytest.raises(UnseenError, match="cannot read an image from a dict"):
        predictor.prepare({"image": "digit.png"})
    # unsigned integers wider than uint8 (torch has no min/max for them) and empty images
    for dtype in (np.uint16, np.uint32, np.uint64):
        got = predictor.prepare(np.full((8, 8), 100, dtype))
        assert torch.equal(got, predictor.prepare(np.full((8, 8), 100, np.uint8)))
        with pytest.raises(UnseenError, match="0..255"):
            predictor.prepare(np.full((8, 8), 256, dtype))
    with pytest.raises(UnseenError, match="0..255"):
        predictor.prepare(np.full((8, 8), 2**63 + 5, np.uint64))
    with pytest.raises(UnseenError, match="height 0 and width 8 has no pixels"):
        predictor.prepare(np.zeros((2, 0, 8), np.uint8))
    # any byte order, long double, read-only memory (no torch warning); NumPy's own types named
    ref = predictor.prepare(np.full((8, 8), 128, np.uint8))
    for same in (np.full((8, 8), 128, ">u2"), np.full((8, 8), 128 / 255, ">f4"),
                 np.full((8, 8), 128 / 255, np.longdouble), np.broadcast_to(np.uint8(128), (8, 8))):  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(predictor.prepare(same), ref), same.dtype
    for bad, message in ((np.zeros((8, 8), bool), "dtype bool is not supported"),
                         (np.zeros((8, 8), complex), "dtype complex128 is not supported"),
                         (np.array(3, np.uint8), "shape () holds one number")):  # fmt: skip
        with pytest.raises(UnseenError, match=re.escape(message)):
            predictor.prepare(bad)


# ----------------------------------------------------------------------------- run folders


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_incompatible_version_and_missing_keys_give_one_clear_error(
    capsys, run_dir, pngs, tmp_path
):
    run = copy_run(run_dir, tmp_path)
    ckpt = torch.load(run / "model.pt", weights_only=True)
    torch.save({**ckpt, "format_version": 999, "unseen_version": "9.9"}, run / "model.pt")
    with pytest.raises(UnseenError, match="format 999"):
        load(run)
    rc, _, err = cli(capsys, run, pngs["known"][0])
    assert rc == 2 and "rerun the experiment" in err and "Traceback" not in err

    torch.save({k: v for k, v in ckpt.items() if k != "split"}, run / "model.pt")
    with pytest.raises(UnseenError, match="lacks split"):
        load(run)
    state = dict(ckpt["state_dict"])
    state.pop("head.weight")
    torch.save({**ckpt, "state_dict": state}, run / "model.pt")
    with pytest.raises(UnseenError, match="do not fit"):
        load(run)
    torch.save([1, 2, 3], run / "model.pt")
    with pytest.raises(UnseenError, match="not an unseen model file"):
        load(run)


class _Payload:
    """Pickles into a call that would create a file: weights-only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_model_file_carrying_code_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"format_version": 1, "state_dict": _Payload(marker)}, run / "model.pt")
    with pytest.raises(UnseenError, match="weights-only"):
        load(run)
    assert not marker.exists()
    # the same for detectors.pt
    run2 = Path(shutil.copytree(run_dir, tmp_path / "copy2"))
    torch.save({"energy": {"x_": _Payload(marker)}}, run2 / "detectors.pt")
    with pytest.raises(UnseenError, match="weights-only"):
        load(run2)
    assert not marker.exists()


def test_unfinished_run_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    (run / "run.json").unlink()
    with pytest.raises(UnseenError, match="not a finished run"):
        load(run)
    with pytest.raises(UnseenError, match="does not exist"):
        load(tmp_path / "nowhere")
    # a sweep folder, or any other folder, is named as what it is
    sweep = tmp_path / "sweep"
    (sweep / "runs" / "single-seed0-1234abcd").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    with pytest.raises(UnseenError, match=re.escape(
        f"{sweep} is a sweep folder, not a run; give one of its runs, e.g. "
        f"{sweep / 'runs' / 'single-seed0-1234abcd'}."
    )):  # fmt: skip
        load(sweep)
    with pytest.raises(UnseenError, match="is not a run folder of unseen .it has no config.json"):
        load(sweep / "runs")


def test_multi_head_run_folders(capsys, run_dir, pngs, tmp_path):
    """RUN/<head>/ holds each head's files; run.json at the top lists the heads."""
    multi = tmp_path / "multi"
    shutil.copytree(run_dir, multi / "softmax")
    shutil.copytree(run_dir, multi / "other")
    (multi / "softmax" / "run.json").unlink()
    (multi / "other" / "run.json").unlink()
    (multi / "run.json").write_text(
        json.dumps({"status": "finished", "format_version": 1, "heads": ["softmax", "other"]})
    )
    assert load(multi, head="softmax").run_dir == multi / "softmax"
    assert load(multi / "softmax").run_dir == multi / "softmax"
    with pytest.raises(UnseenError, match="pass --head NAME"):
        load(multi)
    with pytest.raises(UnseenError, match="no head 'nope'"):
        load(multi, head="nope")
    with pytest.raises(UnseenError, match="is the folder of head 'softmax'"):
        load(multi / "softmax", head="other")
    rc, stdout, _ = cli(capsys, multi, pngs["known"][0], "--head", "softmax", "--format", "csv")
    assert rc == 0 and read_csv(stdout)[0]["error"] == ""
    # a head folder of an unfinished multi-head run is refused
    (multi / "run.json").unlink()
    with pytest.raises(UnseenError, match="not a finished run"):
        load(multi / "softmax")


def test_predict_does_not_import_scikit_learn(run_dir, pngs):
    """Deployment starts fast: loading a run, recalibrating its threshold and predicting need
    no scikit-learn (0.8 s to import), only torch and NumPy."""
    import subprocess

    code = (
        "import sys, unseen\nfrom PIL import Image\n"
        f"p = unseen.load({str(run_dir)!r}, device='cpu').with_options(known_acceptance=0.9)\n"
        f"p.predict([Image.open({str(pngs['known'][0])!r})])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'sklearn', 'scipy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_run_recorded_by_an_earlier_version_keeps_its_fitted_settings(tmp_path, digits):
    # an earlier version accepted --odin-epsilon above 1 and --stem on resnet20 (ignored):
    # such a record must neither stop predict nor swap in default settings for every score
    from unseen.experiment import run_experiment

    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), epochs=2, scores=("msp", "odin"), odin_epsilon=0.05,
                    device="cpu", precision="fp32", report=False)  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    for name in ("model.pt",):
        ckpt = torch.load(out / name, weights_only=True)
        ckpt["config"] = {**ckpt["config"], "odin_epsilon": 1.5, "stem": "small"}
        torch.save(ckpt, out / name)
    recorded = np.load(out / "scores.npz")["score_odin"][:16]
    p = load(out, score="odin")
    assert np.allclose(p.scores(digits.x_test[:16]), recorded, atol=1e-6)


def test_output_never_replaces_an_input_a_run_file_or_a_file_that_is_not_text(
    capsys, run_dir, pngs, tmp_path
):
    image = tmp_path / "victim.png"
    shutil.copy(pngs["known"][0], image)
    before = image.read_bytes()
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"not\0text")
    for output, message in [
        (image, "is one of the inputs"),
        (run_dir / "model.pt", "is a file of the run itself"),
        (run_dir / "metrics.json", "is a file of the run itself"),
        (pngs["known"][1], "names an image or binary file (.png)"),
        (tmp_path / "new.PNG", "names an image or binary file (.PNG), and predict writes text"),
        (blob, "exists and is not a text file"),
    ]:
        rc, _, err = cli(capsys, run_dir, image, "--output", output)
        assert rc == 2 and message in err and "Traceback" not in err, err
    assert image.read_bytes() == before and load(run_dir, device="cpu")  # all intact
    assert not (tmp_path / "new.PNG").exists() and blob.read_bytes() == b"not\0text"
    text = tmp_path / "p.csv"
    text.write_text("an earlier prediction\n")
    assert cli(capsys, run_dir, image, "--output", text)[0] == 0  # a text file is replaced
    assert read_csv(text.read_text())[0]["input"] == str(image)
    for _ in range(2):  # predict's own output, whatever its suffix, is replaced the next time
        assert cli(capsys, run_dir, image, "--output", tmp_path / "p.jsonl")[0] == 0


def test_an_input_no_file_can_have_is_a_row_not_a_crash_of_the_output_check(
    capsys, run_dir, pngs, tmp_path
):
    # a NUL byte (found by the fuzz test): check_output compared it with --output by
    # resolving it, which raises ValueError; it is an unreadable input like any other
    out = tmp_path / "p.csv"
    rc, printed, _ = cli(capsys, run_dir, "\x00", pngs["known"][0], "--output", out)
    assert rc == 0 and "1 row(s) could not be read" in printed
    rows = read_csv(out.read_text())
    assert rows[0]["error"] and rows[1]["error"] == "" and len(rows) == 2


def test_output_never_replaces_a_file_of_a_multi_head_run(tmp_path):
    from unseen.experiment import run_experiment
    from unseen.predict import check_output

    out = tmp_path / "heads"
    cfg = RunConfig(out=str(out), head=("softmax", "ovr"), epochs=1, train_subset=200,
                    device="cpu", report=False)  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    for target in (out / "run.json", out / "metrics.json", out / "ovr" / "model.pt"):
        for given in (out, out / "softmax"):  # the run, or one head's folder of it
            with pytest.raises(InputError, match="is a file of the run itself"):
                check_output(str(target), given, [])
    check_output(str(out / "predictions.csv"), out / "softmax", [])  # beside them: fine


def test_file_names_that_are_not_utf8_are_written_with_escapes(capsys, run_dir, pngs, tmp_path):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")  # a Latin-1 name from an old archive
    try:
        shutil.copy(pngs["known"][0], odd)
    except OSError:  # a file system that takes only UTF-8 names (macOS)
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "p.csv"
    assert cli(capsys, run_dir, tmp_path, "--output", out)[0] == 0
    assert read_csv(out.read_text("utf-8"))[0]["input"] == str(tmp_path / "caf\\xe9.png")
    rc, stdout, _ = cli(capsys, run_dir, odd, "--format", "json")
    assert rc == 0 and json.loads(stdout)["predictions"][0]["input"].endswith("caf\\xe9.png")


def test_a_class_named_unknown_keeps_rejections_apart(predictor, digits):
    import copy

    p = copy.copy(predictor).with_options(threshold=1e9)  # rejects every image
    assert p.predict_names(digits.x_test[:2]) == ["unknown", "unknown"]
    p.classes = ("unknown", *p.classes[1:])  # a dataset with a class of that name
    assert p.predict_names(digits.x_test[:2]) == ["<unknown>", "<unknown>"]
    rows = predict_items(p, iter([]), progress=False)
    assert "(labelled '<unknown>': a class is named 'unknown')" in summary_line(rows, p)


def test_class_names_of_earlier_runs_that_are_not_utf8_are_written_with_escapes(
    run_dir, tmp_path, digits
):
    from unseen.report import _write_text

    run = copy_run(run_dir, tmp_path)
    ckpt = torch.load(run / "model.pt", weights_only=True)
    names = list(ckpt["split"]["known_names"])
    names[0] = os.fsdecode(b"caf\xe9")  # as a folder dataset named it before
    ckpt["split"] = {**ckpt["split"], "known_names": names}
    torch.save(ckpt, run / "model.pt")
    p = load(run, device="cpu")
    assert p.classes[0] == "caf\\xe9" and "\\xe9" in "".join(p.predict_names(digits.x_test))
    _write_text(tmp_path / "r.md", f"class {names[0]}")  # reports of such runs
    assert (tmp_path / "r.md").read_text("utf-8") == "class caf\\xe9"


def test_an_existing_output_that_cannot_be_read_is_not_replaced(tmp_path, monkeypatch):
    from unseen.predict import _looks_binary

    kept = tmp_path / "notes"
    kept.write_text("text")
    assert not _looks_binary(kept)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)  # as a mode-000 file for a user who is not root
    assert _looks_binary(kept)


def test_a_score_worse_than_chance_on_the_run_is_warned_about(capsys, run_dir, pngs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    for name, m in metrics["scores"].items():  # msp the best, energy worse than chance
        m["auroc"] = {"msp": 0.91, "energy": 0.12}.get(name, 0.5)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    rc, _, err = cli(capsys, copy, *pngs["unseen"][:3])
    assert rc == 0
    assert "energy ranked unseen images as more known than known ones (AUROC 0.120)" in err
    assert "the run's best was msp (AUROC 0.910): --score msp" in err
    rc, _, err = cli(capsys, copy, *pngs["unseen"][:3], "--score", "msp")
    assert rc == 0 and "warning" not in err
    rc, _, err = cli(capsys, run_dir, *pngs["unseen"][:3])  # the real run: energy did fine
    assert rc == 0 and "warning" not in err


def test_images_of_another_size_or_colour_are_noted(capsys, run_dir, pngs, tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(rgb)
    wide = tmp_path / "wide.png"
    Image.new("L", (30, 20), 128).save(wide)
    rc, _, err = cli(capsys, run_dir, *pngs["known"][:2], rgb, wide)
    assert rc == 0
    assert ("note: of the images read, 1 resized to the run's 8 x 8 (stretched where the aspect "
            "differs) and 1 converted to greyscale, as training reads images") in err  # fmt: skip
    rc, out, err = cli(capsys, run_dir, *pngs["known"][:2])  # the run's own kind: nothing to say
    assert rc == 0 and "note: of the images" not in err and "converted" not in out.splitlines()[0]


def test_each_row_says_how_its_image_was_converted(capsys, run_dir, pngs, tmp_path):
    # the digits run is greyscale, 8 x 8 (height x width)
    images = {
        "same.png": Image.open(pngs["known"][0]),
        "colour.png": Image.new("RGB", (8, 8), (200, 10, 10)),
        "grey_rgb.png": Image.new("RGB", (8, 8), (90, 90, 90)),  # RGB, no colour: kept as is
        "alpha.png": Image.new("LA", (8, 8), (90, 255)),
        "square.png": Image.new("L", (16, 16), 90),
        "wide.png": Image.new("L", (30, 20), 90),  # 30 wide, 20 high
        "everything.png": Image.new("RGBA", (8, 12), (0, 90, 0, 255)),
    }
    for name, im in images.items():
        im.save(tmp_path / name)
    rc, out, err = cli(capsys, run_dir, *(tmp_path / n for n in images), "--format", "csv")
    assert rc == 0
    rows = {Path(r["input"]).name: r["converted"] for r in read_csv(out)}
    assert rows == {
        "same.png": "",
        "colour.png": "colour to greyscale",
        "grey_rgb.png": "",
        "alpha.png": "alpha dropped",
        "square.png": "resized from 16 x 16",
        "wide.png": "resized from 20 x 30",  # height x width, as the run's image size
        "everything.png": "resized from 12 x 8; alpha dropped; colour to greyscale",
    }
    assert ("of the images read, 3 resized to the run's 8 x 8 (stretched where the aspect "
            "differs) and 2 with their alpha channel dropped and 2 converted to greyscale") in err  # fmt: skip
    rc, out, _ = cli(
        capsys, run_dir, tmp_path / "colour.png", tmp_path / "same.png", "--format", "json"
    )
    assert [r["converted"] for r in json.loads(out)["predictions"]] == ["colour to greyscale", None]
    arrays = tmp_path / "arrays.npz"  # npz rows are converted the same way, and say so
    np.savez(arrays, x=np.full((2, 12, 10, 3), 77, np.uint8) + np.arange(3, dtype=np.uint8))
    rc, out, err = cli(capsys, run_dir, arrays, "--format", "csv")
    assert [r["converted"] for r in read_csv(out)] == [
        "resized from 12 x 10; colour to greyscale"
    ] * 2
    assert "2 resized to the run's 8 x 8" in err and "2 converted to greyscale" in err
    # the table: one note column for a row's error or conversion, only when a row has one
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rc, out, _ = cli(capsys, run_dir, tmp_path / "same.png", tmp_path / "wide.png", broken)
    header, _, same, wide, bad, *_ = out.splitlines()
    assert header.split()[-1] == "note" and same.split()[-1] == same.split()[5]  # no note
    column = header.index("note")  # every note starts under the header, left-aligned
    assert wide[column:] == "resized from 20 x 30"
    assert bad[column:] == "could not be read as an image (UnidentifiedImageError)"
    rc, out, _ = cli(capsys, run_dir, tmp_path / "same.png")
    assert "note" not in out.splitlines()[0]
    np.save(tmp_path / "one.npy", np.zeros((2, 8, 8), np.uint8))  # an array, but no .npz
    rc, out, _ = cli(capsys, run_dir, tmp_path / "one.npy", "--format", "csv")
    assert read_csv(out)[0]["error"].endswith(
        "save arrays of images as .npz, np.savez(path, x=images)"
    )


def test_an_rgb_run_says_greyscale_to_rgb_and_resized_in_height_x_width(capsys, tmp_path):
    from unseen.experiment import run_experiment

    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npz"  # 10 high, 12 wide, 3 channels
    np.savez(data, x_train=rng.integers(0, 256, (40, 10, 12, 3), dtype=np.uint8),
             y_train=np.arange(40) % 2, x_test=rng.integers(0, 256, (10, 10, 12, 3), dtype=np.uint8),
             y_test=np.arange(10) % 2)  # fmt: skip
    cfg = RunConfig(dataset=f"npz:{data}", known=("0", "1"), epochs=1, device="cpu",
                    precision="fp32", scores=("msp",), report=False, val_fraction=0.25,
                    out=str(tmp_path / "run"))  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    images = {
        "rgb.png": Image.new("RGB", (12, 10), (1, 2, 3)),
        "grey.png": Image.new("L", (12, 10), 90),
        "rgba.png": Image.new("RGBA", (12, 10), (1, 2, 3, 4)),
        "tall.png": Image.new("RGB", (10, 12), (1, 2, 3)),
    }
    for name, im in images.items():
        im.save(tmp_path / name)
    rc, out, _ = cli(capsys, tmp_path / "run", *(tmp_path / n for n in images), "--format", "csv")
    assert rc == 0
    assert {Path(r["input"]).name: r["converted"] for r in read_csv(out)} == {
        "rgb.png": "",
        "grey.png": "greyscale to RGB",
        "rgba.png": "alpha dropped",
        "tall.png": "resized from 12 x 10",
    }


def test_conform_takes_uint8_batches_and_names_prepare_for_the_rest(run_dir):
    from unseen.errors import InputError

    p = load(run_dir, device="cpu")
    batch = torch.full((2, 3, 12, 10), 77, dtype=torch.uint8)
    assert p.conform(batch).shape == (2, 1, 8, 8) and p.conform(batch).dtype == torch.uint8
    for wrong in (torch.rand(2, 3, 12, 10), batch[0], np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(InputError, match=r"prepare\(\) reads every other format"):
            p.conform(wrong)
    with pytest.raises(InputError, match="not 8 .* channels-last"):
        p.conform(torch.zeros((2, 8, 8, 3), dtype=torch.uint8))


def test_an_item_holding_several_images_gets_an_error_not_the_next_rows(run_dir):
    from unseen.predict import Item, predict_items

    p = load(run_dir, device="cpu")
    white = np.full((8, 8), 255, np.uint8)
    alone = predict_items(p, [Item("white", white)])[0]
    rows = predict_items(p, [Item("batch", np.zeros((3, 8, 8), np.uint8)), Item("white", white)])
    assert rows[0]["error"] == "holds 3 images; give one image per item"
    assert rows[0]["converted"] is None and rows[0]["score"] is None
    assert rows[1]["score"] == alone["score"] and rows[1]["error"] is None


def test_predict_reads_16_bit_files_at_the_run_s_bit_depth(tmp_path, capsys):
    from unseen.experiment import run_experiment

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                values = rng.integers(0, 4096, (8, 8)).astype(np.uint16)
                Image.fromarray(values).save(tmp_path / "data" / split / cls / f"{i}.png")
    cfg = RunConfig(dataset=f"folder:{tmp_path / 'data'}", known=("a", "b"), bit_depth=12,
                    epochs=1, device="cpu", precision="fp32", scores=("msp",), report=False,
                    val_fraction=0.34, out=str(tmp_path / "run"))  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    p = load(tmp_path / "run", device="cpu")
    assert p.bit_depth == 12
    image = Image.open(tmp_path / "data" / "test" / "a" / "0.png")
    expected = np.rint(np.asarray(image, dtype=float) * 255 / 4095).astype(np.uint8)
    assert p.prepare(image)[0, 0].numpy().tolist() == expected.tolist()
    # and the scores of the run's own test files are the ones it stored
    stored = np.load(tmp_path / "run" / "scores.npz")["score_msp"]
    files = sorted((tmp_path / "data" / "test").rglob("*.png"))
    np.testing.assert_allclose(p.with_options(score="msp").scores(files), stored, rtol=1e-6)
    # a file beyond 12 bits is clipped, and predict says so
    white = tmp_path / "white.png"
    Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(white)
    assert main(["predict", str(tmp_path / "run"), str(white), str(files[0])]) == 0
    assert "1 with values above 4095 clipped to white" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "run"), str(white), "--format", "csv"]) == 0
    assert read_csv(capsys.readouterr().out)[0]["converted"] == "values above 4095 clipped"
    from unseen.predict import Item, predict_items  # a file's path in Python: the same

    assert predict_items(p, [Item("white", str(white))])[0]["converted"] == (
        "values above 4095 clipped"
    )
    # rescore reads the training files at 12 bits too: its fingerprint check passes...
    from unseen.rescore import rescore_run

    rescore_run(tmp_path / "run", {"scores": "+energy"}, progress=False, log=None)
    # ...and would fail at 16 bits
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "bit_depth": 16}))
    with pytest.raises(UnseenError, match="differ"):
        rescore_run(tmp_path / "run", {"scores": "+energy"}, progress=False, log=None)
