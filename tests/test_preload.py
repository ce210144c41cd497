"""unseen.preload: on a GPU, the report's imports on a side thread while the GPU trains."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from unseen import RunConfig
from unseen.experiment import run_experiment
from unseen.preload import REPORT_MODULES, importing, modules_to_preload, preload


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Tiny importable modules of the test's own: one records the thread that imported it,
    one takes a while to import, one fails to import."""
    (tmp_path / "preload_probe.py").write_text(
        "import threading\nimported_on = threading.current_thread().name\n"
    )
    (tmp_path / "preload_slow.py").write_text("import time\ntime.sleep(0.5)\ndone = True\n")
    (tmp_path / "preload_broken.py").write_text('raise ImportError("broken on purpose")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("preload_probe", "preload_slow", "preload_broken"):
        sys.modules.pop(name, None)


def test_preload_imports_on_a_side_thread_and_leaves_failures_to_the_real_import(modules):
    thread = preload(["preload_broken", "preload_probe"])  # a failure does not stop the rest
    assert thread is not None
    thread.join(timeout=30)
    assert sys.modules["preload_probe"].imported_on == "unseen-preload"
    assert "preload_broken" not in sys.modules
    with pytest.raises(ImportError, match="broken on purpose"):  # the error the run would see
        import preload_broken  # noqa: F401


def test_preload_starts_no_thread_when_everything_is_imported(modules):
    import preload_probe  # noqa: F401

    assert preload(["preload_probe", "sys"]) is None


def test_importing_waits_for_the_imports_when_the_block_ends_also_by_an_exception(modules):
    with pytest.raises(KeyError), importing(["preload_slow"]):
        raise KeyError("the block failed at once")
    assert sys.modules["preload_slow"].done  # imported in full before the exception left


def test_only_a_gpu_run_with_a_report_preloads_and_the_environment_can_turn_it_off(
    monkeypatch,
):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert modules_to_preload(cuda, report=True) == REPORT_MODULES
    assert "unseen.report" in REPORT_MODULES and "sklearn.manifold" in REPORT_MODULES
    assert modules_to_preload(cuda, report=False) == ()  # nothing after training needs them
    # on a CPU the imports would compete with training for the cores (slower, measured)
    assert modules_to_preload(cpu, report=True) == ()
    for off in ("0", "false", " Off ", "NO"):
        monkeypatch.setenv("UNSEEN_PRELOAD", off)
        assert modules_to_preload(cuda, report=True) == (), off
    monkeypatch.setenv("UNSEEN_PRELOAD", "1")
    assert modules_to_preload(cuda, report=True) == REPORT_MODULES


@pytest.mark.parametrize("report", [True, False])
def test_a_run_imports_beside_its_training_and_waits_before_scoring(report, tmp_path, monkeypatch):
    events = []

    def on_a_gpu(device, report):  # what the run would ask for on a GPU
        return modules_to_preload(torch.device("cuda"), report)

    @contextlib.contextmanager
    def recorded(names):
        events.append(("import", tuple(names)))
        with importing(names):
            yield
        events.append("waited")

    import unseen.experiment as experiment

    score_head = experiment.score_head

    def scoring(*args, **kwargs):
        events.append("scoring")
        return score_head(*args, **kwargs)

    monkeypatch.setattr(experiment, "modules_to_preload", on_a_gpu)
    monkeypatch.setattr(experiment, "importing", recorded)
    monkeypatch.setattr(experiment, "score_head", scoring)
    cfg = RunConfig(out=str(tmp_path / "run"), epochs=1, device="cpu", report=report)
    run_experiment(cfg, progress=False, log=None)
    assert events == [("import", REPORT_MODULES if report else ()), "waited", "scoring"]
    assert (tmp_path / "run" / "report.html").is_file() == report
