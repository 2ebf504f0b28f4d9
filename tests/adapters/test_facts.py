"""Host inventory: the real probe on this host, in-process and as the remote runs it."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.facts import (
    PROBE_SOURCE,
    DiskFacts,
    FactsError,
    GpuFacts,
    HostFacts,
    HostInventory,
    capacity_view,
    collect,
    facts_digest,
    parse_probe_output,
    probe_source,
)
from adapters.facts import probe as probe_module
from adapters.facts.model import VOLATILE_DISK_FIELDS, VOLATILE_GPU_FIELDS, VOLATILE_HOST_FIELDS

psutil = importlib.import_module("psutil")  # no stubs; by name it is typed as a module


def local_facts(roots: list[str], **options: Any) -> HostFacts:
    return parse_probe_output(json.dumps(collect(roots, **options)))


def run_remote_style(roots: list[str], *flags: str, python: str = sys.executable) -> HostFacts:
    """As SSH runs it: the command line through a shell, the script on stdin."""
    command = HostInventory.command(roots)
    command = dataclasses.replace(command, argv=(python, *flags, *command.argv[1:]))
    done = subprocess.run(
        ["sh", "-c", command.shell()],
        input=command.stdin,
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/",
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.count(b"\n") == 1, done.stdout
    return HostInventory.parse(done.stdout)


def nvml_initialises() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.fixture
def roots(tmp_path: Path) -> list[str]:
    """The root "/" and a host root that does not exist yet, with a space to quote."""
    return ["/", str(tmp_path / "host root" / "srv")]


# --- the real host ----------------------------------------------------------


def test_local_inventory_matches_psutil(roots: list[str]) -> None:
    facts = local_facts(roots)

    assert facts.hostname == socket.gethostname()
    assert facts.cpu_logical == psutil.cpu_count(logical=True)
    assert facts.cpu_physical == psutil.cpu_count(logical=False)
    assert facts.memory_total_bytes == psutil.virtual_memory().total
    assert 0 < facts.memory_available_bytes <= facts.memory_total_bytes
    assert facts.disks[0] == DiskFacts(
        path="/", total_bytes=psutil.disk_usage("/").total, free_bytes=facts.disks[0].free_bytes
    )
    assert facts.boot_time == int(psutil.boot_time())
    assert facts.python_version == platform.python_version()
    assert facts.kernel == platform.release()
    assert facts.arch == platform.machine()
    assert facts.cpu_model
    assert facts.sources[0] == "psutil"


def test_no_nvidia_driver_is_a_fact_not_an_error(roots: list[str]) -> None:
    facts = local_facts(roots)
    assert "pynvml" in facts.sources
    if nvml_initialises():
        pytest.skip("NVML initialises here: this host has an NVIDIA driver")
    assert facts.gpus == []
    assert facts.gpu_note is not None
    assert re.search("library|driver", facts.gpu_note, re.IGNORECASE), facts.gpu_note


def test_os_is_the_os_release_pretty_name() -> None:
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    expected = probe_module.parse_os_release(text) or platform.system()
    assert local_facts(["/"]).os == expected


def test_fallback_without_psutil_agrees_with_psutil(roots: list[str]) -> None:
    facts = local_facts(roots, use_psutil=False, use_pynvml=False, nvidia_smi=None)

    assert facts.sources == ["proc"]
    assert facts.cpu_logical == psutil.cpu_count(logical=True)
    assert facts.cpu_physical == psutil.cpu_count(logical=False)
    assert facts.memory_total_bytes == psutil.virtual_memory().total
    assert facts.boot_time == int(psutil.boot_time())
    assert [d.total_bytes for d in facts.disks] == [
        psutil.disk_usage("/").total,
        psutil.disk_usage(str(Path(roots[1]).parents[1])).total,
    ]
    assert facts.gpus == []
    assert facts.gpu_note == "no NVML bindings and no nvidia-smi"


def test_missing_root_reports_requested_path_with_nearest_parent_figures(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "there" / "yet"
    for options in ({}, {"use_psutil": False}):
        (disk,) = local_facts([str(missing)], **options).disks
        assert disk.path == str(missing)
        assert disk.total_bytes == psutil.disk_usage(str(tmp_path)).total
        st = os.statvfs(tmp_path)
        assert disk.total_bytes == st.f_blocks * st.f_frsize


def test_duplicate_roots_are_sized_once() -> None:
    assert [d.path for d in local_facts(["/", "/", "/tmp"]).disks] == ["/", "/tmp"]


# --- as the remote runs it ---------------------------------------------------


def test_remote_probe_agrees_with_in_process(roots: list[str]) -> None:
    remote = run_remote_style(roots, "-I")
    here = local_facts(roots)

    assert capacity_view(remote) == capacity_view(here)
    assert facts_digest(remote) == facts_digest(here)
    assert [d.path for d in remote.disks] == roots


def test_remote_probe_without_site_packages_uses_proc(roots: list[str]) -> None:
    """``-S -I``: no site-packages, so no psutil, no pynvml and none of our packages."""
    remote = run_remote_style(roots, "-S", "-I")
    here = local_facts(roots)

    assert remote.sources == ["proc"]
    assert remote.gpus == []
    assert remote.gpu_note == "no NVML bindings and no nvidia-smi"
    same = (
        *("hostname", "os", "kernel", "arch", "cpu_model", "cpu_logical", "cpu_physical"),
        *("memory_total_bytes", "boot_time", "python_version"),
    )
    assert {f: getattr(remote, f) for f in same} == {f: getattr(here, f) for f in same}
    assert [(d.path, d.total_bytes) for d in remote.disks] == [
        (d.path, d.total_bytes) for d in here.disks
    ]


def test_remote_probe_with_no_roots_sizes_slash() -> None:
    command = HostInventory.command(["/"])
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-"],
        input=command.stdin,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert [d.path for d in parse_probe_output(done.stdout).disks] == ["/"]


def _old_python() -> str | None:
    """An interpreter older than ours: $CHASSIS_TEST_OLD_PYTHON, else python3.8 on PATH."""
    for candidate in (os.environ.get("CHASSIS_TEST_OLD_PYTHON"), shutil.which("python3.8")):
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def test_probe_runs_on_python_3_8() -> None:
    ast.parse(PROBE_SOURCE, feature_version=(3, 8))
    python = _old_python()
    if python is None:
        pytest.skip("no Python 3.8 found (set CHASSIS_TEST_OLD_PYTHON)")
    facts = run_remote_style(["/"], "-I", python=python)
    assert facts.python_version != platform.python_version()
    assert facts.memory_total_bytes == psutil.virtual_memory().total


def test_probe_is_self_contained() -> None:
    """Top level imports only the standard library; psutil/pynvml only by name."""
    tree = ast.parse(PROBE_SOURCE)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            names.append(node.module or "")
    roots = {name.split(".")[0] for name in names}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


def test_probe_source_is_the_module_file() -> None:
    assert probe_source() == PROBE_SOURCE == Path(probe_module.__file__).read_text()
    command = HostInventory.command(["/srv/app"])
    assert command.argv == ("python3", "-", "/srv/app")
    assert command.stdin == PROBE_SOURCE.encode()
    assert HostInventory.command(["/a b"]).shell() == "python3 - '/a b'"
    with pytest.raises(ValueError, match="at least one root"):
        HostInventory.command([])


# --- pure parsers -------------------------------------------------------------


def test_proc_parsers_on_captured_text() -> None:
    meminfo = "MemTotal:       16303104 kB\nMemFree:         1024 kB\nBuffers: 2 kB\nCached: 4 kB\n"
    assert probe_module.parse_meminfo(meminfo) == (16303104 * 1024, (1024 + 2 + 4) * 1024)
    assert probe_module.parse_meminfo(meminfo + "MemAvailable:   9000 kB\n")[1] == 9000 * 1024
    two_sockets = "\n\n".join(
        f"processor\t: {n}\nphysical id\t: {n // 4}\ncore id\t\t: {n % 2}" for n in range(8)
    )
    assert probe_module.parse_cpuinfo_cores(two_sockets) == 4  # 2 sockets x 2 cores, SMT 2
    assert probe_module.parse_cpuinfo_cores("processor\t: 0\n") is None
    arm = "processor\t: 0\nBogoMIPS\t: 48.00\n\nHardware\t: BCM2835\n"
    assert probe_module.parse_cpu_model(arm) == "BCM2835"
    assert probe_module.parse_btime("cpu  1 2 3\nbtime 1700000000\n") == 1700000000
    release = 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n'
    assert probe_module.parse_os_release(release) == "Ubuntu 22.04.4 LTS"
    assert probe_module.parse_os_release('PRETTY_NAME="Say \\"hi\\""\n') == 'Say "hi"'
    assert probe_module.parse_os_release("PRETTY_NAME='unbalanced\n") == "unbalanced"


# --- digest -------------------------------------------------------------------

GPU = GpuFacts(
    index=0,
    uuid="GPU-1c2d3e4f-0000-1111-2222-333344445555",
    name="NVIDIA A100-SXM4-80GB",
    memory_total_bytes=85899345920,
    memory_free_bytes=84974239744,
    driver_version="550.54.15",
    cuda_driver_version="12.4",
    compute_capability="8.0",
    power_draw_mw=61523,
    power_limit_mw=400000,
    temperature_c=34,
)
SAMPLE = HostFacts(
    hostname="gpu-01",
    os="Ubuntu 22.04.4 LTS",
    kernel="5.15.0-105-generic",
    arch="x86_64",
    cpu_model="AMD EPYC 7763 64-Core Processor",
    cpu_logical=256,
    cpu_physical=128,
    memory_total_bytes=1081975255040,
    memory_available_bytes=1000000000000,
    disks=[
        DiskFacts(path="/", total_bytes=3840000000000, free_bytes=2000000000000),
        DiskFacts(path="/srv/app", total_bytes=7680000000000, free_bytes=7000000000000),
    ],
    boot_time=1717000000,
    python_version="3.10.12",
    gpus=[GPU, msgspec.structs.replace(GPU, index=1, uuid="GPU-2")],
    gpu_note=None,
    sources=["psutil", "pynvml"],
)


def test_digest_is_domain_separated_sha256_of_sorted_json() -> None:
    view = capacity_view(SAMPLE)
    body = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(b"chassis.host.facts.v1\x00" + body.encode()).hexdigest()
    assert facts_digest(SAMPLE) == expected
    assert "memory_available_bytes" not in view
    assert all(set(d) == {"path", "total_bytes"} for d in view["disks"])
    assert "temperature_c" not in view["gpus"][0]


def test_digest_equal_for_back_to_back_probes(roots: list[str]) -> None:
    first, second = local_facts(roots), local_facts(roots)
    assert facts_digest(first) == facts_digest(second)


def _changed(value: Any) -> Any:
    if isinstance(value, str):
        return "99.9" if re.fullmatch(r"\d+\.\d+", value) else value + "-changed"
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "a note"
    assert isinstance(value, list)
    return [*value, "extra"]


def _stable(kind: type[msgspec.Struct], volatile: frozenset[str]) -> list[str]:
    return [name for name in kind.__struct_fields__ if name not in volatile]


@pytest.mark.parametrize("field", _stable(HostFacts, VOLATILE_HOST_FIELDS))
def test_every_capacity_field_changes_the_digest(field: str) -> None:
    changed: Any
    if field == "disks":
        changed = [msgspec.structs.replace(SAMPLE.disks[0], total_bytes=1), SAMPLE.disks[1]]
    elif field == "gpus":
        changed = SAMPLE.gpus[:1]
    else:
        changed = _changed(getattr(SAMPLE, field))
    assert facts_digest(msgspec.structs.replace(SAMPLE, **{field: changed})) != facts_digest(SAMPLE)


@pytest.mark.parametrize(
    ("kind", "field"),
    [(DiskFacts, f) for f in _stable(DiskFacts, VOLATILE_DISK_FIELDS)]
    + [(GpuFacts, f) for f in _stable(GpuFacts, VOLATILE_GPU_FIELDS)],
)
def test_every_disk_and_gpu_capacity_field_changes_the_digest(
    kind: type[msgspec.Struct], field: str
) -> None:
    if kind is DiskFacts:
        disk = SAMPLE.disks[1]
        facts = msgspec.structs.replace(
            SAMPLE,
            disks=[
                SAMPLE.disks[0],
                msgspec.structs.replace(disk, **{field: _changed(getattr(disk, field))}),
            ],
        )
    else:
        gpu = SAMPLE.gpus[1]
        facts = msgspec.structs.replace(
            SAMPLE,
            gpus=[
                SAMPLE.gpus[0],
                msgspec.structs.replace(gpu, **{field: _changed(getattr(gpu, field))}),
            ],
        )
    assert facts_digest(facts) != facts_digest(SAMPLE)


def test_digest_ignores_disk_order() -> None:
    flipped = msgspec.structs.replace(SAMPLE, disks=SAMPLE.disks[::-1])
    assert facts_digest(flipped) == facts_digest(SAMPLE)


readings = st.integers(min_value=0, max_value=2**62)
maybe = st.none() | st.integers(min_value=0, max_value=2**40)


@given(
    available=readings,
    disk_free=st.lists(readings, min_size=2, max_size=2),
    gpu_free=st.lists(readings, min_size=2, max_size=2),
    draw=st.lists(maybe, min_size=2, max_size=2),
    temperature=st.lists(st.none() | st.integers(-40, 120), min_size=2, max_size=2),
)
def test_volatile_readings_never_change_the_digest(
    available: int,
    disk_free: list[int],
    gpu_free: list[int],
    draw: list[int | None],
    temperature: list[int | None],
) -> None:
    moved = msgspec.structs.replace(
        SAMPLE,
        memory_available_bytes=available,
        disks=[
            msgspec.structs.replace(d, free_bytes=f)
            for d, f in zip(SAMPLE.disks, disk_free, strict=True)
        ],
        gpus=[
            msgspec.structs.replace(g, memory_free_bytes=f, power_draw_mw=p, temperature_c=t)
            for g, f, p, t in zip(SAMPLE.gpus, gpu_free, draw, temperature, strict=True)
        ],
    )
    assert facts_digest(moved) == facts_digest(SAMPLE)


# --- parse_probe_output -----------------------------------------------------------


def test_parse_round_trips() -> None:
    assert parse_probe_output(msgspec.json.encode(SAMPLE)) == SAMPLE
    assert parse_probe_output(json.dumps(msgspec.to_builtins(SAMPLE))) == SAMPLE


def _sample_json(**edits: Any) -> str:
    data = msgspec.to_builtins(SAMPLE)
    for path, value in edits.items():
        target = data
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(data)


DELETE = object()


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"hostname": DELETE}, "missing required field `hostname`"),
        ({"gpus__0__uuid": DELETE}, "missing required field `uuid`"),
        ({"cpu_logical": "256"}, "Expected `int`, got `str` - at `$.cpu_logical`"),
        ({"boot_time": 1717000000.5}, "Expected `int`, got `float` - at `$.boot_time`"),
        ({"gpus__1__power_draw_mw": 61.5}, "got `float` - at `$.gpus[1].power_draw_mw`"),
        ({"disks__0__total_bytes": -1}, "at `$.disks[0].total_bytes`"),
        ({"gpus__0__compute_capability": "sm_80"}, "at `$.gpus[0].compute_capability`"),
        ({"sources": "psutil"}, "at `$.sources`"),
        ({"extra": 1}, "unknown field `extra`"),
        ({"disks__1__mount": "/srv"}, "unknown field `mount` - at `$.disks[1]`"),
    ],
)
def test_parse_rejects_with_a_one_line_message_naming_the_field(
    edits: dict[str, Any], message: str
) -> None:
    with pytest.raises(FactsError) as caught:
        parse_probe_output(_sample_json(**edits))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid host facts: ")


def test_parse_rejects_non_json() -> None:
    with pytest.raises(FactsError, match="invalid host facts"):
        parse_probe_output("chassis probe: neither psutil nor /proc is available\n")
    assert issubclass(FactsError, ValueError)
