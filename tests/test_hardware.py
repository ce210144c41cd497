"""Run-time choices of threads, device and precision (unseen.hardware)."""

from __future__ import annotations

import pytest
import torch

from unseen import hardware, threads
from unseen.errors import ConfigError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_budget_is_every_core_unless_the_environment_caps_it(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    assert threads.thread_budget() == 6
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.thread_budget() == 2
    monkeypatch.setenv(threads.THREADS_ENV, "0")  # at least one thread
    assert threads.thread_budget() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "many")  # not a number: every core
    assert threads.thread_budget() == 6


def test_the_thread_budget_needs_no_torch():
    """The report's t-SNE thread asks for its budget before torch is imported."""
    import subprocess
    import sys

    code = "import sys, unseen.threads as t; t.thread_budget(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_configure_threads_sets_torch_and_the_description_counts_them(monkeypatch, restore_threads):
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    assert hardware.configure_threads() == 1
    assert torch.get_num_threads() == 1
    assert hardware.describe_device(torch.device("cpu")).startswith("cpu (1 thread")
    assert "1 threads" not in hardware.describe_device(torch.device("cpu"))
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    hardware.configure_threads()
    assert hardware.describe_device(torch.device("cpu")).startswith("cpu (2 threads")


def test_auto_precision_follows_the_cpus_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    for units in ("AMX", "AVX512-BF16"):
        monkeypatch.setattr(hardware, "cpu_bf16_units", lambda units=units: units)
        assert hardware.resolve_precision("auto", cpu) == "bf16"
        assert hardware.describe_device(cpu).endswith(f", {units})")
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: None)
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    assert hardware.describe_device(cpu).endswith(("thread)", "threads)"))
    assert hardware.resolve_precision("bf16", cpu) == "bf16"  # asked for: kept


@pytest.mark.parametrize(
    ("probes", "flags", "expected"),
    [
        ({"_is_amx_tile_supported": True, "_is_avx512_bf16_supported": True}, "", "AMX"),
        ({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": True}, "", "AVX512-BF16"),
        ({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False}, "", None),
        # AVX-512 without BF16 (Skylake, Zen 3 has none at all): emulated, so no
        ({}, "flags : fpu avx2 avx512f avx512bw", None),
        ({}, "flags : fpu avx2 avx512f avx512_bf16", "AVX512-BF16"),
        ({}, "flags : fpu amx_bf16 amx_tile avx512_bf16", "AMX"),
    ],
)
def test_cpu_bf16_units_from_torchs_probes_or_cpuinfo(
    monkeypatch, tmp_path, probes, flags, expected
):
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        if name in probes:
            monkeypatch.setattr(torch.cpu, name, lambda v=probes[name]: v, raising=False)
        else:  # an older torch without the probe: /proc/cpuinfo decides
            monkeypatch.delattr(torch.cpu, name, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags)
    real_path = hardware.Path
    monkeypatch.setattr(
        hardware, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p)
    )
    assert hardware.cpu_bf16_units() == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error():
    assert hardware.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        hardware.resolve_device("cuda")


def test_auto_precision_on_cuda_needs_native_bf16_or_fp16_tensor_cores(monkeypatch):
    # is_bf16_supported() says yes on a V100 or T4 too (emulated, slow): the capability decides.
    # Volta and Turing (7.x) have fp16 tensor cores; Pascal (6.x) none
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = torch.device("cuda")
    for capability, expected in [
        ((6, 1), "fp32"),
        ((7, 0), "fp16"),
        ((7, 5), "fp16"),
        ((8, 0), "bf16"),
        ((9, 0), "bf16"),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert hardware.resolve_precision("auto", gpu) == expected


def test_a_run_gives_the_caller_its_thread_count_back(tmp_path, monkeypatch, restore_threads):
    from unseen.config import RunConfig
    from unseen.experiment import run_experiment

    monkeypatch.setenv("UNSEEN_NUM_THREADS", "2")
    torch.set_num_threads(1)
    seen = []
    monkeypatch.setattr(hardware.torch, "set_num_threads", lambda n, real=torch.set_num_threads: (
        seen.append(n), real(n)))  # fmt: skip
    cfg = RunConfig(epochs=1, train_subset=200, test_subset=100, scores=("msp",), report=False,
                    device="cpu", precision="fp32", out=str(tmp_path / "run"))  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    assert seen[0] == 2  # the run used its budget
    assert torch.get_num_threads() == 1  # and the caller has its own setting back


def test_resolve_device_names_and_objects(monkeypatch):
    from unseen.errors import ConfigError
    from unseen.hardware import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")  # from Python
    for bad, why in (("tpu", "is not known"), ("meta", "is not supported")):
        with pytest.raises(ConfigError, match=f"device '{bad}' {why}"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda:1' was asked for.*sees no CUDA GPU"):
            resolve_device("cuda:1")

    # a machine with one GPU (as torch would report it) has cuda:0 and no cuda:1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="device 'cuda:1' was asked for.*1 CUDA GPU.*from 0"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="device 'cuda:7' was asked for"):  # from Python too
        resolve_device(torch.device("cuda", 7))
