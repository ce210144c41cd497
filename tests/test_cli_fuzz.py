"""Issue 10: random option values and random config files never make the CLI crash.

``unseen run`` is driven through :func:`unseen.cli.main` with every real check in place
(option parsing, config files, cross-field validation, run-folder rules, loading the data
and resolving the split). Just before the run would write its first file, a stand-in
stops it, so no training happens and nothing is written. Every outcome must be exit 0
(accepted) or exit 2 with exactly one line on stderr, never a traceback.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unseen.cli import main
from unseen.config import FIELDS, flag_name
from unseen.errors import UnseenError

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: values that have broken parsers before, or that sit on the edge of what a field accepts
TRICKY = [
    "", " ", "0", "-0", "1", "-1", "2", "0.5", "1.0", "1e-12", "1e309", "-1e309", "nan", "inf",
    "-inf", "NaN", "auto", "none", "null", "all", "true", "false", "yes", "off", "9", "0,1",
    ",", ",,", "9,9", "a,b", "1_000", "4294967295", "4294967296", "99999999999999999999999",
    "1" * 5000, "0x10", "٣", "T-shirt/top", "Ankle boot", "msp,msp", "softmax,softmax",
    "ovr", "resnet18", "cuda", "bf16", "npz:", "folder:", "npz:/nonexistent.npz",
    "folder:/nonexistent", "mnist", "cifar10", "../x", "\x00", "é", "runs/fuzz",
]  # fmt: skip
VALUE = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20))
VALUE_FIELDS = sorted(n for n, f in FIELDS.items() if not isinstance(f.default, bool))
BOOL_FIELDS = sorted(n for n, f in FIELDS.items() if isinstance(f.default, bool))
#: fields whose value names a folder that the stand-in may be asked to touch
PATH_FIELDS = {"out"}


class Reached(UnseenError):
    """Raised where the run would write its first file: everything before it accepted."""

    exit_code = 0


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Stop ``unseen run`` at its first write, in a scratch folder, without the fashion data."""
    import unseen.experiment

    def reached(*args, **kwargs):
        raise Reached("reached the first write")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    monkeypatch.setenv("UNSEEN_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setattr(unseen.experiment, "write_json", reached)
    monkeypatch.setattr(unseen.experiment, "clear_run_state", reached)
    return tmp_path


def call(capsys, argv: list[str]) -> tuple[int, str]:
    """Run the CLI: nothing may escape it, and it exits 0 or 2 without a traceback."""
    try:
        code = main(argv)
    except BaseException as exc:  # noqa: BLE001 - the point is that nothing escapes
        pytest.fail(f"{argv!r} raised {type(exc).__name__}: {exc}")
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    return code, err


def check_outcome(capsys, argv: list[str]) -> tuple[int, str]:
    """``unseen run``: one error line, or it reached the stand-in's first write."""
    code, err = call(capsys, argv)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(("unseen: error: ", "unseen run: error: ")), (argv, err)
    else:
        assert "reached the first write" in err or "--help" in argv, (argv, err)
    return code, err


def _safe_path_value(value: str) -> str:
    """Keep --out inside the scratch folder (the stand-in never writes, but be sure)."""
    return "runs/" + value.replace("\x00", "").lstrip("/").replace("..", "_")


option = st.one_of(
    st.tuples(st.sampled_from(VALUE_FIELDS), VALUE).map(
        lambda nv: [flag_name(nv[0]), _safe_path_value(nv[1]) if nv[0] in PATH_FIELDS else nv[1]]
    ),
    st.sampled_from(BOOL_FIELDS).flatmap(
        lambda n: st.sampled_from([[flag_name(n)], ["--no-" + n.replace("_", "-")]])
    ),
)


@SETTINGS
@given(options=st.lists(option, max_size=4))
def test_random_options_never_crash(no_work, capsys, options):
    argv = ["run", "--device", "cpu", "--dataset", "digits"]
    for opt in options:
        if opt[0] == "--dataset" and opt[1:] and opt[1].startswith(("fashion", "folder:", "npz:")):
            continue  # keep loads cheap; the bad-file tests cover these sources
        argv += opt
    check_outcome(capsys, argv)


@SETTINGS
@given(
    tokens=st.lists(
        st.one_of(st.sampled_from(["--epochs", "--lr", "-x", "--", "run", "--help"]), VALUE),
        max_size=5,
    )
)
def test_random_tokens_never_crash(no_work, capsys, tokens):
    check_outcome(capsys, ["run", "--device", "cpu", *tokens])


def test_each_bad_value_names_its_option(no_work, capsys):
    """A value no field accepts: exit 2 and the message names the option."""
    accepting = {"data_root", "out"}  # any text is a valid folder name
    for name in VALUE_FIELDS:
        code, err = check_outcome(capsys, ["run", "--device", "cpu", flag_name(name), "zz?"])
        if name in accepting:
            assert code == 0
            continue
        assert code == 2 and flag_name(name) in err, (name, err)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("lr", "inf", "--lr must be positive and finite"),
        ("lr", "nan", "--lr must be positive and finite"),
        ("weight_decay", "1e309", "--weight-decay must be zero or more, and finite"),
        ("seed", "-1", "--seed must be an integer from 0 to 4294967295"),
        ("seed", "4294967296", "--seed must be an integer from 0 to 4294967295"),
        ("flip", "maybe", "--flip must be on, off or auto"),
        ("epochs", "0", "--epochs must be positive and finite"),
        ("val_fraction", "1", "--val-fraction must be between 0 and 1"),
        # an empty class list is not silently read as the default (the last class)
        ("holdout", "", "--holdout must be one or more class indices or names"),
        ("known", " , ", "--known must be one or more class indices or names"),
    ],
)
def test_edge_values_are_refused_with_what_is_accepted(no_work, capsys, name, value, message):
    if name not in FIELDS:
        pytest.skip(f"no field {name}")
    code, err = check_outcome(capsys, ["run", flag_name(name), value])
    assert code == 2 and message in err, err


# ----------------------------------------------------------------------------- config files


def toml_value(value) -> str:
    """A small TOML writer, enough for the values generated below."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


scalar = st.one_of(
    st.sampled_from(TRICKY).filter(lambda s: "\x00" not in s),
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(min_value=datetime.datetime(1970, 1, 1)),
)
toml_values = st.one_of(
    scalar,
    st.lists(st.one_of(st.text(max_size=6), st.integers(-5, 20)), max_size=3),
    st.dictionaries(st.sampled_from(["a", "lr"]), st.integers(0, 3), max_size=2),
)
toml_keys = st.one_of(
    st.sampled_from(sorted(FIELDS)),
    st.sampled_from(sorted(FIELDS)).map(lambda k: k.replace("_", "-")),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=10),
)


@SETTINGS
@given(table=st.dictionaries(toml_keys, toml_values, max_size=4), in_run_table=st.booleans())
def test_random_config_files_never_crash(no_work, capsys, table, in_run_table):
    table.pop("out", None)  # the output folder is covered above
    table = {
        k: v
        for k, v in table.items()
        if not (
            k == "dataset" and isinstance(v, str) and v.startswith(("fashion", "folder:", "npz:"))
        )
    }
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    text = ("[run]\n" if in_run_table else "") + "\n".join(lines) + "\n"
    path = Path(no_work) / "config.toml"
    path.write_text(text)
    check_outcome(capsys, ["run", "--device", "cpu", "--config", str(path)])


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes_as_config_file_never_crash(no_work, capsys, data):
    path = Path(no_work) / "config.toml"
    path.write_bytes(data)
    check_outcome(capsys, ["run", "--device", "cpu", "--config", str(path)])


def test_config_file_that_cannot_be_read(no_work, capsys):
    for target, message in [
        (Path(no_work) / "absent.toml", "does not exist"),
        (Path(no_work), "is a folder"),
    ]:
        code, err = check_outcome(capsys, ["run", "--config", str(target)])
        assert code == 2 and message in err


# ----------------------------------------------------------------------------- predict, sweep


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch digits run with every score, and a few of its test images."""
    folder = tmp_path_factory.mktemp("fuzz_predict")
    run_dir = folder / "run"
    argv = ["run", "--device", "cpu", "--epochs", "1", "--train-subset", "300",
            "--test-subset", "60", "--scores", "all", "--no-report", "--quiet",
            "--out", str(run_dir)]  # fmt: skip
    assert main(argv) == 0
    from sklearn.datasets import load_digits

    np.savez(folder / "images.npz", x=(load_digits().images[:5] * 16).astype(np.uint8))
    # the plain call works, so the random ones below start from a working command
    assert main(["predict", str(run_dir), str(folder / "images.npz"), "--device", "cpu"]) == 0
    return folder


PREDICT_OPTIONS = {
    "--score": st.one_of(st.sampled_from(["energy", "msp", "odin", "knn", "ovr-doc"]), VALUE),
    "--threshold": VALUE,
    "--known-acceptance": VALUE,
    "--head": st.one_of(st.sampled_from(["softmax", "ovr"]), VALUE),
    "--format": st.one_of(st.sampled_from(["table", "csv", "json"]), VALUE),
    "--output": VALUE.map(_safe_path_value),
    "--device": st.one_of(st.sampled_from(["cpu", "auto"]), VALUE),
    "--batch-size": VALUE,
}
predict_option = st.sampled_from(sorted(PREDICT_OPTIONS)).flatmap(
    lambda name: PREDICT_OPTIONS[name].map(lambda value: [name, value])
)


@SETTINGS
@given(
    options=st.lists(predict_option, max_size=3),
    inputs=st.lists(
        st.one_of(st.sampled_from(["images.npz", "run", "absent.png", "."]), VALUE), max_size=2
    ),
)
def test_random_predict_options_never_crash(tiny_run, capsys, monkeypatch, options, inputs):
    monkeypatch.chdir(tiny_run)
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    argv = ["predict", "run", "images.npz", *inputs]
    for opt in options:
        argv += opt
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    code, err = call(capsys, argv)
    if code == 2:  # a bad option, or no input readable: one line for the option
        assert err.strip() and all(
            line.startswith(("unseen: error: ", "unseen predict: error: "))
            for line in err.strip().splitlines()
        ), (argv, err)


SWEEP_OPTIONS = {
    "--protocol": st.one_of(
        st.sampled_from(["loo", "neal6", "random:4", "random:0", "rare:9", "rare:x", "single"]),
        VALUE,
    ),
    "--seeds": VALUE,
    "--splits": VALUE,
    "--fractions": st.one_of(st.sampled_from(["0,0.5,1", "1.5", "-0.1", "0,,1"]), VALUE),
    "--compare-balance": st.one_of(st.sampled_from(["all", "none,sampler", "nope"]), VALUE),
    "--jobs": VALUE,
    "--holdout": VALUE,
    "--known": VALUE,
}
sweep_option = st.sampled_from(sorted(SWEEP_OPTIONS)).flatmap(
    lambda name: SWEEP_OPTIONS[name].map(lambda value: [name, value])
)


@SETTINGS
@given(options=st.lists(sweep_option, max_size=4))
def test_random_sweep_options_never_crash(no_work, capsys, options):
    """``sweep --dry-run`` expands the protocol and lists its runs without training."""
    argv = ["sweep", "--dry-run", "--device", "cpu", "--protocol", "loo", "--out", "sweeps/s"]
    for opt in options:
        argv += opt
    code, err = call(capsys, argv)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("unseen: error: ", "unseen sweep: error: "))
