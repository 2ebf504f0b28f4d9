"""Hardware admission: does a host's recorded hardware satisfy a runtime?

Runtimes come from ``[runtimes.NAME]`` in ``chassis.toml`` or from the
built-in catalogue. Each unmet requirement yields a stable reason code
(``no-gpu``, ``insufficient-vram`` …) that scripts can match on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from chassis.errors import ChassisError
from chassis.stack.schema import RuntimeSpec
from chassis.stack.spec import parse_size

GIB = 2**30


class UnknownRuntimeError(ChassisError):
    exit_code = 3


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str = ""
    gpu: str = "none"
    min_gpus: int = 0
    min_vram_bytes: int = 0
    min_compute_capability: str | None = None
    cuda_driver: str | None = None
    min_cores: int = 0
    min_memory_bytes: int = 0

    def requirements(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "description")}


BUILTIN_RUNTIMES = {
    "cuda-small": Runtime(
        "cuda-small",
        "small CUDA models: one NVIDIA GPU, >= 8 GiB VRAM, Volta or newer",
        gpu="nvidia",
        min_gpus=1,
        min_vram_bytes=8 * GIB,
        min_compute_capability="7.0",
        cuda_driver=">=11.8,<14",
    ),
    "cuda-large": Runtime(
        "cuda-large",
        "large CUDA models: one NVIDIA GPU, >= 40 GiB VRAM, Ampere or newer",
        gpu="nvidia",
        min_gpus=1,
        min_vram_bytes=40 * GIB,
        min_compute_capability="8.0",
        cuda_driver=">=12.0",
    ),
    "cpu-only": Runtime(
        "cpu-only",
        "CPU inference: >= 16 cores and >= 32 GiB RAM",
        min_cores=16,
        min_memory_bytes=32 * GIB,
    ),
}


@dataclass(frozen=True)
class Verdict:
    runtime: Runtime
    admitted: bool
    reasons: list[tuple[str, str]]
    """(code, explanation) for each unmet requirement."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime.name,
            "admitted": self.admitted,
            "reasons": [{"code": c, "detail": d} for c, d in self.reasons],
            "requirements": self.runtime.requirements(),
        }


def resolve_runtime(name: str, declared: dict[str, RuntimeSpec]) -> Runtime:
    """A runtime from the stack file, else the built-in catalogue."""
    spec = declared.get(name)
    if spec is not None:
        return Runtime(
            name,
            spec.description,
            gpu=spec.gpu,
            min_gpus=spec.min_gpus or (1 if spec.gpu == "nvidia" else 0),
            min_vram_bytes=parse_size(spec.min_vram),
            min_compute_capability=spec.min_compute_capability,
            cuda_driver=spec.cuda_driver,
            min_cores=spec.min_cores,
            min_memory_bytes=parse_size(spec.min_memory),
        )
    if name in BUILTIN_RUNTIMES:
        return BUILTIN_RUNTIMES[name]
    known = sorted({*declared, *BUILTIN_RUNTIMES})
    raise UnknownRuntimeError(f"unknown runtime {name!r} (known: {', '.join(known)})")


def evaluate(runtime: Runtime, facts: dict[str, Any]) -> Verdict:
    """Judge recorded ``facts`` (a host inventory) against ``runtime``. Pure."""
    reasons: list[tuple[str, str]] = []
    cores = int(facts.get("cpu_logical", 0))
    memory = int(facts.get("memory_total_bytes", 0))
    if cores < runtime.min_cores:
        reasons.append(("insufficient-cores", f"needs {runtime.min_cores} cores, host has {cores}"))
    if memory < runtime.min_memory_bytes:
        reasons.append(
            (
                "insufficient-memory",
                f"needs {runtime.min_memory_bytes / GIB:g} GiB RAM, "
                f"host has {memory / GIB:.1f} GiB",
            )
        )
    if runtime.gpu == "nvidia":
        reasons.extend(_gpu_reasons(runtime, facts))
    return Verdict(runtime, not reasons, reasons)


def _gpu_reasons(runtime: Runtime, facts: dict[str, Any]) -> list[tuple[str, str]]:
    gpus: list[dict[str, Any]] = list(facts.get("gpus") or [])
    if not gpus:
        note = facts.get("gpu_note") or "no NVIDIA GPU found"
        return [("no-gpu", f"needs {runtime.min_gpus} NVIDIA GPU(s); {note}")]
    reasons: list[tuple[str, str]] = []
    big_enough = [g for g in gpus if int(g.get("memory_total_bytes", 0)) >= runtime.min_vram_bytes]
    if len(gpus) < runtime.min_gpus:
        reasons.append(("too-few-gpus", f"needs {runtime.min_gpus} GPUs, host has {len(gpus)}"))
    elif len(big_enough) < runtime.min_gpus:
        largest = max(int(g.get("memory_total_bytes", 0)) for g in gpus)
        reasons.append(
            (
                "insufficient-vram",
                f"needs {runtime.min_gpus} GPU(s) with >= {runtime.min_vram_bytes / GIB:g} GiB, "
                f"largest has {largest / GIB:.1f} GiB",
            )
        )
    if runtime.min_compute_capability:
        wanted = _version(runtime.min_compute_capability)
        capable = [
            g
            for g in big_enough or gpus
            if _version(str(g.get("compute_capability") or "0")) >= wanted
        ]
        if len(capable) < runtime.min_gpus:
            best = max(str(g.get("compute_capability") or "0") for g in gpus)
            reasons.append(
                (
                    "compute-capability-too-low",
                    f"needs compute capability >= {runtime.min_compute_capability}, best is {best}",
                )
            )
    if runtime.cuda_driver:
        cuda = facts.get("gpus", [{}])[0].get("cuda_driver_version")
        if not cuda:
            reasons.append(("cuda-driver-unknown", "the CUDA driver version was not reported"))
        elif not version_in_range(cuda, runtime.cuda_driver):
            reasons.append(
                ("cuda-driver-out-of-range", f"CUDA driver {cuda} is not {runtime.cuda_driver}")
            )
    return reasons


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) or (0,)


def version_in_range(version: str, spec: str) -> bool:
    """``"12.4"`` against ``">=12.0,<13"``: comparisons joined by commas, all must hold."""
    have = _version(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        match = re.match(r"^(>=|<=|==|>|<)\s*([\d.]+)$", clause)
        if not match:
            raise ValueError(f"version range clause {clause!r}: expected e.g. >=12.0")
        op, wanted_text = match.groups()
        wanted = _version(wanted_text)
        width = max(len(have), len(wanted))
        a = have + (0,) * (width - len(have))
        b = wanted + (0,) * (width - len(wanted))
        ok = {
            ">=": a >= b,
            "<=": a <= b,
            "==": a == b,
            ">": a > b,
            "<": a < b,
        }[op]
        if not ok:
            return False
    return True
