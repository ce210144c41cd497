"""Run-time choices of threads, device and precision (unseen.hardware)."""

from __future__ import annotations

import pytest
import torch

from unseen import hardware
from unseen.errors import ConfigError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_budget_is_every_core_unless_the_environment_caps_it(monkeypatch):
    monkeypatch.setattr(hardware, "available_cores", lambda: 6)
    monkeypatch.delenv(hardware.THREADS_ENV, raising=False)
    assert hardware.thread_budget() == 6
    monkeypatch.setenv(hardware.THREADS_ENV, "2")
    assert hardware.thread_budget() == 2
    monkeypatch.setenv(hardware.THREADS_ENV, "0")  # at least one thread
    assert hardware.thread_budget() == 1
    monkeypatch.setenv(hardware.THREADS_ENV, "many")  # not a number: every core
    assert hardware.thread_budget() == 6


def test_configure_threads_sets_torch_and_the_description_counts_them(monkeypatch, restore_threads):
    monkeypatch.setenv(hardware.THREADS_ENV, "1")
    assert hardware.configure_threads() == 1
    assert torch.get_num_threads() == 1
    assert hardware.describe_device(torch.device("cpu")).startswith("cpu (1 thread")
    assert "1 threads" not in hardware.describe_device(torch.device("cpu"))
    monkeypatch.setenv(hardware.THREADS_ENV, "2")
    hardware.configure_threads()
    assert hardware.describe_device(torch.device("cpu")).startswith("cpu (2 threads")


def test_auto_precision_follows_amx_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    assert hardware.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    assert hardware.resolve_precision("bf16", cpu) == "bf16"  # asked for: kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error():
    assert hardware.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        hardware.resolve_device("cuda")
