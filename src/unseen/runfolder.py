"""The run folder: what a run leaves behind, written atomically.

Layout (see the README's "What a run writes"): ``config.json``, ``metrics.json``,
``history.csv``, ``scores.npz``, ``model.pt``, ``detectors.pt``, ``checkpoint.pt`` while
the run trains, one subfolder per head when there are several (each a complete one-head
run), then ``run.json``, the finished marker, and after it the extras that read the finished
run: ``ood/`` (``--ood``) and ``report.html``/``report.md``/``plots/``.
Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UnseenError

FORMAT_VERSION = 1


def _read_umask() -> int:
    mask = os.umask(0o022)  # Python < 3.13 can only read the umask by setting it
    os.umask(mask)
    return mask


#: read once at import, in the main thread (setting it briefly is not thread-safe)
_UMASK = _read_umask()


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder (created if missing). An OSError names the
    folder that could not be made, or ``path`` (the file asked for, not the temporary one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file stands where one of the folders should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename) from None
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def check_writable(path: str | Path) -> None:
    """Raise the OSError that writing ``path`` would raise, now (before long work whose result
    would be lost): its folder is created, and a temporary file made there and removed."""
    fd, tmp = _temporary_beside(Path(path))
    os.close(fd)
    os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would have
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename == tmp:  # disk full while writing...
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


def jsonable(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnseenError(f"{path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnseenError(f"{path} is not valid JSON ({exc}).") from None


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A run's ``config.json``, which must hold a table of options."""
    record = read_json(path)
    if not isinstance(record, dict):
        raise UnseenError(f"{path} is not a run's config.json (it holds no table of options).")
    return record


def read_npz(
    path: str | Path, what: str = "", keep: Callable[[str], bool] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, read without pickle: those whose names ``keep``
    accepts (it is called once for every name, in the archive's order). A missing file, a
    file that is no archive (a single ``.npy`` array, text), object arrays and a damaged
    archive each raise :class:`UnseenError` in one sentence naming ``what path``."""
    import zipfile

    path = Path(path)
    name = f"{what} {path}".strip()
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except FileNotFoundError:
        raise UnseenError(f"{name} does not exist.") from None
    except OSError as exc:
        raise UnseenError(
            f"{name} cannot be read ({exc.strerror or type(exc).__name__})."
        ) from None
    if magic == b"\x93NUMPY":
        raise UnseenError(
            f"{name} is a single .npy array, not an .npz archive of named arrays (np.savez)."
        )
    if not magic.startswith(b"PK"):
        raise UnseenError(f"{name} is not an .npz archive.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if keep is None or keep(k)}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if "allow_pickle" in str(exc):  # object arrays: loading them would run pickle
            raise UnseenError(
                f"{name} holds object arrays, which are not loaded (unpickling can run code)."
            ) from None
        raise UnseenError(f"{name} is truncated or damaged ({type(exc).__name__}).") from None


def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Uncompressed: zlib took 1.6 s for a ResNet-18 run's scores.npz (11 MB, mostly float16
    features) to save 3.4 MB beside a 45 MB model.pt; ``np.savez`` takes 0.02 s."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def save_torch(path: str | Path, obj: Any) -> Path:
    """Save tensors, dicts, lists, strings and numbers only, so ``weights_only`` loading works."""
    import torch  # imported here so that the CLI starts without loading torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: a pickle that carries code is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnseenError(f"{path} does not exist.")
    try:
        with warnings.catch_warnings():  # a plain pickle: the error below says enough
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError for zip damage, EOFError...
        # torch's own messages are long, advise turning the safety check off, or say nothing
        # useful ("pop from empty list"): name the cause instead
        if "GLOBAL" in str(exc):
            why = (
                "it holds Python objects besides tensors, whose unpickling could run code; "
                "save a state dict of tensors instead"
            )
        else:
            why = f"it is truncated, damaged or not a PyTorch file: {type(exc).__name__}"
        raise UnseenError(
            f"{path} could not be loaded as a weights-only PyTorch file ({why})."
        ) from None


def slug(text: str) -> str:
    """``text`` for a file or folder name: runs of other characters than ASCII letters,
    digits and ``.`` become one ``-``, lower case; ``x`` when nothing is left."""
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-").lower() or "x"


def default_run_dir(dataset: str, unseen_names: Sequence[str], root: str | Path = "runs") -> Path:
    """``runs/<time>-<dataset>-<holdout>``, created here so that two runs started in the same
    second (two processes) never share it: the second gets ``...-2``."""
    import time

    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(Path(dataset).name if ':' in dataset else dataset)}-{slug('+'.join(unseen_names)) or 'none'}"
    Path(root).mkdir(parents=True, exist_ok=True)
    path, n = Path(root) / stem, 1
    while True:
        try:
            path.mkdir()  # atomic: fails when another run has taken the name
            return path
        except FileExistsError:
            n += 1
            path = Path(root) / f"{stem}-{n}"


# ----------------------------------------------------------------------------- finished marker

FINISHED_FILE = "run.json"


def mark_finished(run_dir: str | Path, **info: Any) -> Path:
    """Write ``run.json`` with status "finished", once every result of the run is written
    (the far-OOD results and the report, which read the finished run, follow it; the run
    then writes it again with the time of every stage, ``finished_at`` given to keep the
    first time stamp)."""
    import time

    from . import __version__

    return write_json(
        Path(run_dir) / FINISHED_FILE,
        {"status": "finished", "format_version": FORMAT_VERSION, "unseen_version": __version__,
         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info},
    )  # fmt: skip


def is_finished(run_dir: str | Path) -> bool:
    path = Path(run_dir) / FINISHED_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "finished"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


#: files of one's own that a new run or sweep folder may hold already: a log that
#: `| tee DIR/x.log` or `> DIR/x.log` creates before the command starts, the --config file
#: kept beside it, notes
SIDE_FILE_SUFFIXES = frozenset({".log", ".out", ".err", ".txt", ".toml", ".md"})


def is_side_file(path: Path) -> bool:
    """Whether ``path`` is a plain file of :data:`SIDE_FILE_SUFFIXES`."""
    return path.is_file() and path.suffix.lower() in SIDE_FILE_SUFFIXES


def _read_table(path: Path) -> tuple[dict | None, str | None]:
    """``path``'s JSON table, or None and why it is not one."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "is missing"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"is not valid JSON ({exc})"
    return (value, None) if isinstance(value, dict) else (None, "holds no table")


def run_heads(run_dir: Path, config: dict) -> list[str]:
    """The heads a run's ``config`` (its config.json) records; softmax when it names none."""
    heads = config.get("head") or ["softmax"]
    if not isinstance(heads, list) or not all(isinstance(h, str) for h in heads):
        raise UnseenError(
            f"{run_dir / 'config.json'} records no list of heads: the run folder is damaged."
        )
    return heads


def run_damage(run_dir: str | Path, *, model: bool = False) -> str | None:
    """What is wrong with the finished run in ``run_dir``, naming the file (None: nothing
    found): the files that reading a finished run's results needs, ``config.json`` and, in
    each head's folder, ``metrics.json`` (a JSON table each) and ``scores.npz`` (a readable
    archive: only its end is read, so this is quick); with ``model``, ``model.pt`` too
    (rescoring rebuilds the network; a copy of a run's results may leave it out). A sweep,
    its summary and ``unseen report``/``unseen rescore`` of a folder of runs leave such a
    run out and say so, instead of stopping at it."""
    import zipfile

    run_dir = Path(run_dir)
    config, problem = _read_table(run_dir / "config.json")
    if config is None:
        return f"config.json {problem}"
    try:
        heads = run_heads(run_dir, config)
    except UnseenError:
        return "config.json records no list of heads"
    names = ["metrics.json"] + [f"{h}/metrics.json" for h in heads if len(heads) > 1]
    for name in names:
        if (problem := _read_table(run_dir / name)[1]) is not None:
            return f"{name} {problem}"
    archives = ("scores.npz", "model.pt") if model else ("scores.npz",)
    for head in heads:
        where = f"{head}/" if len(heads) > 1 else ""
        for name in archives:
            path = run_dir / where / name
            if not path.is_file():
                return f"{where}{name} is missing"
            if not zipfile.is_zipfile(path):
                return f"{where}{name} is truncated or damaged (not a readable archive)"
    return None


def require_finished(run_dir: str | Path) -> Path:
    """Raise a one-line error unless ``run_dir`` holds a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise UnseenError(f"run folder {run_dir} {what}.")
    if not is_finished(run_dir):
        if (run_dir / "sweep.json").is_file():
            some = sorted((run_dir / "runs").glob("*/"))[:1]
            example = some[0] if some else run_dir / "runs" / "<run>"
            raise UnseenError(
                f"{run_dir} is a sweep folder, not a run; give one of its runs, e.g. {example}."
            )
        if not (run_dir / "config.json").is_file():
            raise UnseenError(f"{run_dir} is not a run folder of unseen (it has no config.json).")
        raise UnseenError(
            f"{run_dir} is not a finished run (no {FINISHED_FILE} with status 'finished'); "
            "finish it with `unseen run --resume --out DIR` or run it again."
        )
    return run_dir


# ----------------------------------------------------------------------------- resolved settings

#: settings left on ``auto`` resolve per machine (batch 128 on a CPU, 512 on a GPU; bf16 or
#: fp32; ...) and are not in the hash: runs averaged together must agree on them
RESOLVED_SETTINGS = ("device", "precision", "batch_size", "lr", "epochs")


def resolved_settings(config: dict, metrics: dict) -> dict[str, Any]:
    """The :data:`RESOLVED_SETTINGS` a finished run recorded: device kind and precision from
    its ``metrics.json``, batch size, learning rate and epochs from its ``config.json`` (both
    written after 'auto' was resolved). The device is compared by kind (``cpu``, ``cuda``):
    thread counts and GPU models change speed and rounding (within the spread seeds show),
    not the experiment. Settings a run did not record are left out."""
    device = metrics.get("device")
    found = {
        "device": device.split(" (")[0].strip() if isinstance(device, str) else None,
        "precision": metrics.get("precision"),
        "batch_size": config.get("batch_size"),
        "lr": config.get("lr"),
        "epochs": next((e for e in (metrics.get("epochs"), config.get("epochs")) if e), None),
    }
    return {k: v for k, v in found.items() if v is not None}


def mixed_settings(records: Sequence[dict]) -> dict[str, list] | None:
    """The :data:`RESOLVED_SETTINGS` that differ between ``records``, each with its values in
    order of appearance; ``None`` when they agree."""
    out = {}
    for key in RESOLVED_SETTINGS:
        values = list(dict.fromkeys(r.get("settings", {}).get(key) for r in records))
        values = [v for v in values if v is not None]
        if len(values) > 1:
            out[key] = values
    return out or None


def describe_mixed(mixed: dict[str, list]) -> str:
    """``device cpu vs cuda, batch_size 128 vs 512``."""
    return ", ".join(f"{k} {' vs '.join(str(v) for v in vals)}" for k, vals in mixed.items())
