"""The machine and the software: oneDNN turned on by ``import catsdogs``, the precision
``auto`` resolves to (guessed from the CPU flags, or timed), and the versions a run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from catsdogs import system
from catsdogs.constants import VERSION
from catsdogs.errors import ConfigError


@pytest.mark.parametrize("preset_env, expected", [(None, "1"), ("0", "0")])
def test_importing_catsdogs_turns_onednn_on_unless_the_user_chose(preset_env, expected):
    """TensorFlow leaves oneDNN off on AVX2-only CPUs; `import catsdogs` turns it on (before TF
    is imported) but never overrides the user's own TF_ENABLE_ONEDNN_OPTS."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset_env is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset_env
    code = ("import os, catsdogs; from catsdogs.system import software_versions; "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], "
            "software_versions()['tf_enable_onednn_opts'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [expected, expected]


def test_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    assert system.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: False)
    assert system.resolve_precision("auto") == "float32"
    assert system.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="unknown precision"):
        system.resolve_precision("float16")


def _never_timed(precision):
    raise AssertionError(f"timed {precision} where nothing should be timed")


@pytest.mark.parametrize("f32, bf16, expected", [
    (0.50, 0.30, "mixed_bfloat16"),  # bfloat16 1.67× faster
    (0.30, 0.45, "float32"),  # bfloat16 slower: a CPU with AVX512_BF16 where it does not pay
    (0.30, 0.29, "float32"),  # 1.03×: within the margin, a tie goes to float32
])
def test_precision_auto_times_both_on_a_bfloat16_cpu_and_trains_in_the_faster(
        monkeypatch, f32, bf16, expected):
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    timed = []
    seconds = {"float32": f32, "mixed_bfloat16": bf16}
    choice = system.choose_precision("auto", lambda p: timed.append(p) or seconds[p], 112, 64)
    assert sorted(timed) == ["float32", "mixed_bfloat16"]
    assert choice.precision == expected
    assert (choice.size, choice.batch_size, choice.step_seconds) == (112, 64, seconds)
    assert f"float32 {64 / f32:.0f}, mixed_bfloat16 {64 / bf16:.0f}" in choice.reason
    assert choice.line().startswith(f"Precision: {expected} (auto: timed photos/s at 112 px")


def test_precision_is_not_timed_without_native_bfloat16_or_when_set(monkeypatch):
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: False)
    choice = system.choose_precision("auto", _never_timed, 112, 64)
    assert (choice.precision, choice.step_seconds, choice.size) == ("float32", {}, None)
    assert "no native bfloat16" in choice.reason
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    for precision in ("float32", "mixed_bfloat16"):
        assert system.choose_precision(precision, _never_timed, 112, 64).precision == precision
    untimed = system.choose_precision("auto", _never_timed, 112, 64, timed=False)
    assert untimed.precision == "mixed_bfloat16" and "several workers" in untimed.reason
    with pytest.raises(ConfigError, match="unknown precision"):
        system.choose_precision("float16", _never_timed, 112, 64)


NET = {"model": "resnet", "size": 96, "batch_size": 64}


def _timer(seconds, timed):
    return lambda p: timed.append(p) or seconds[p]


def test_precision_timings_are_cached_per_machine_and_net(monkeypatch, tmp_path):
    """A second run of the same net on the same machine reuses the first run's timings (no
    builds, no traces); another net, size or machine is timed afresh."""
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", str(tmp_path / "cache"))
    timed = []
    first = system.choose_precision("auto", _timer({"float32": 0.2, "mixed_bfloat16": 0.3},
                                                   timed), 96, 64, key=NET)
    assert sorted(timed) == ["float32", "mixed_bfloat16"] and not first.cached
    file = tmp_path / "cache" / system.PRECISION_CACHE_FILE
    (entry,) = json.loads(file.read_text()).values()
    assert entry["key"] == NET and entry["step_seconds"] == first.step_seconds
    again = system.choose_precision("auto", _never_timed, 96, 64, key=NET)
    assert (again.precision, again.step_seconds, again.cached) == ("float32",
                                                                   first.step_seconds, True)
    assert f"cached in {file}" in again.reason and "float32 320, mixed_bfloat16 213" in \
        again.reason
    timed.clear()
    bigger = system.choose_precision("auto", _timer({"float32": 0.6, "mixed_bfloat16": 0.3},
                                                    timed), 128, 64, key={**NET, "size": 128})
    assert len(timed) == 2 and bigger.precision == "mixed_bfloat16" and not bigger.cached
    assert system.choose_precision("auto", _never_timed, 96, 64, key=NET).cached
    monkeypatch.setattr(system, "machine_key", lambda: {"cpu": "another"})
    timed.clear()
    system.choose_precision("auto", _timer({"float32": 0.2, "mixed_bfloat16": 0.3}, timed),
                            96, 64, key=NET)
    assert len(timed) == 2
    assert len(json.loads(file.read_text())) == 3


@pytest.mark.parametrize("cache", ["corrupt", "off", "unwritable"])
def test_a_bad_or_missing_cache_only_means_timing_again(monkeypatch, tmp_path, cache):
    monkeypatch.setattr(system, "cpu_has_bf16", lambda: True)
    folder = tmp_path / "cache"
    monkeypatch.setenv("CATSDOGS_CACHE_DIR", "" if cache == "off" else str(folder))
    if cache == "corrupt":
        folder.mkdir()
        (folder / system.PRECISION_CACHE_FILE).write_text('{"half a')
    if cache == "unwritable":
        folder.write_text("a file where the folder should be")
    seconds = {"float32": 0.2, "mixed_bfloat16": 0.1}
    for _ in range(2):
        timed = []
        choice = system.choose_precision("auto", _timer(seconds, timed), 96, 64, key=NET)
        assert choice.precision == "mixed_bfloat16"
        if cache == "corrupt":  # re-timed once, then rewritten whole and reused
            break
        assert len(timed) == 2 and not choice.cached
    if cache == "corrupt":
        assert len(timed) == 2
        assert system.choose_precision("auto", _never_timed, 96, 64, key=NET).cached
    if cache == "off":
        assert not folder.exists()


def test_the_machine_key_names_the_cpu_cores_and_onednn_settings(monkeypatch):
    monkeypatch.setattr(system, "_cpuinfo", lambda: (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
        "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: another\n"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    key = system.machine_key()
    assert key["cpu"] == {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "207",
                          "model name": "Intel(R) Xeon(R) Processor"}
    assert key["onednn"][0] == "AVX2" and key["cores"] >= 1
    monkeypatch.setattr(system, "_cpuinfo", lambda: "flags\t\t: fpu avx2\n")
    assert system.machine_key()["flags"] != key["flags"]


def test_software_versions_name_the_package_and_libraries():
    versions = system.software_versions()
    assert versions["catsdogs"] == VERSION
    assert {"python", "tensorflow", "keras", "numpy", "scikit-learn", "pillow"} <= set(versions)
    assert all(isinstance(v, str) for v in versions.values())


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_room(tmp_path):
    """MemAvailable, unless the process's cgroup (v2, or v1's memory controller) leaves less
    room under its limit; a cgroup without a limit ("max", or v1's ~2**63) does not count."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:  8000000 kB\nMemAvailable:  4000000 kB\n")
    assert system.available_memory_bytes(str(proc), str(cgroup)) == 4_096_000_000
    (proc / "self" / "cgroup").write_text("0::/job\n")
    (cgroup / "job").mkdir(parents=True)
    (cgroup / "job" / "memory.max").write_text("max\n")
    (cgroup / "job" / "memory.current").write_text("1000\n")
    assert system.available_memory_bytes(str(proc), str(cgroup)) == 4_096_000_000
    (cgroup / "job" / "memory.max").write_text("3000001000\n")
    assert system.available_memory_bytes(str(proc), str(cgroup)) == 3_000_000_000
    (proc / "self" / "cgroup").write_text("4:memory:/box\n0::/\n")  # cgroup v1
    (cgroup / "memory" / "box").mkdir(parents=True)
    (cgroup / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (cgroup / "memory" / "box" / "memory.usage_in_bytes").write_text("5\n")
    assert system.available_memory_bytes(str(proc), str(cgroup)) == 4_096_000_000
    (cgroup / "memory" / "box" / "memory.limit_in_bytes").write_text("2000000005\n")
    assert system.available_memory_bytes(str(proc), str(cgroup)) == 2_000_000_000
