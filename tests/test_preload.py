"""unseen.preload: the imports a run needs later, on a side thread."""

from __future__ import annotations

import sys

import pytest
import torch

from unseen import RunConfig
from unseen.experiment import run_experiment
from unseen.preload import METRICS_MODULES, REPORT_MODULES, modules_to_preload, preload


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Two tiny importable modules of the test's own: one records the thread that imported
    it, one fails to import."""
    (tmp_path / "preload_probe.py").write_text(
        "import threading\nimported_on = threading.current_thread().name\n"
    )
    (tmp_path / "preload_broken.py").write_text('raise ImportError("broken on purpose")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("preload_probe", "preload_broken"):
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


def test_only_a_gpu_run_preloads_and_the_report_modules_only_for_a_report():
    # on a CPU the imports would compete with training for the cores (slower, measured)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert modules_to_preload(cuda, report=True) == METRICS_MODULES + REPORT_MODULES
    assert modules_to_preload(cuda, report=False) == METRICS_MODULES
    assert modules_to_preload(cpu, report=True) == modules_to_preload(cpu, report=False) == ()
    assert "unseen.report" in REPORT_MODULES and "sklearn.manifold" in REPORT_MODULES


def test_a_run_asks_to_preload_for_its_device_and_report(tmp_path, monkeypatch):
    asked = []

    def record(names):
        asked.append(tuple(names))
        return preload(names)

    def cuda_modules(device, report):  # what the run would ask for on a GPU
        return modules_to_preload(torch.device("cuda"), report)

    monkeypatch.setattr("unseen.experiment.preload", record)
    monkeypatch.setattr("unseen.experiment.modules_to_preload", cuda_modules)
    cfg = RunConfig(out=str(tmp_path / "run"), epochs=1, device="cpu")
    run_experiment(cfg, progress=False, log=None)
    assert asked == [METRICS_MODULES + REPORT_MODULES]
    assert (tmp_path / "run" / "report.html").is_file()  # written after the preloaded imports
