"""Shared fixtures: tiny runs on the bundled digits, on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from unseen.config import RunConfig

#: a quick digits configuration: a few epochs, the default split (9 held out)
QUICK = dict(epochs=8, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A finished default-split digits run folder, shared by the tests that only read it."""
    from unseen.experiment import run_experiment

    out = tmp_path_factory.mktemp("runs") / "digits"
    run_experiment(RunConfig(out=str(out), **QUICK), progress=False, log=None)
    return out


@pytest.fixture
def terminal(monkeypatch):
    """``sys.stderr`` replaced by a buffer that says it is a terminal, so progress bars show;
    its ``getvalue()`` is what they wrote. Get it with ``request.getfixturevalue("terminal")``
    inside the test: pytest's output capture replaces ``sys.stderr`` again between a test's
    fixtures and its body, so as a plain argument it would never see a bar."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    buffer = Terminal()
    monkeypatch.setattr(sys, "stderr", buffer)
    return buffer
