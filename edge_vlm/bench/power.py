"""Energy during the decode, where the platform exposes power: NVIDIA GPUs (nvidia-smi power.draw), Jetson
(tegrastats, board input power VDD_IN), x86 CPUs with RAPL (/sys/class/powercap energy counters).

A meter is started once per backend; `begin()` / `end(mark)` bracket each decode. `end` is cheap (it runs inside
the timed region) and returns a function that gives the joules spent in between (None when it cannot tell), to be
called after the timers stop. Where no source exists the report says "unavailable" and why.
What each source covers differs, and the report names it: nvidia-smi is the GPU board, tegrastats the whole
Jetson module, RAPL the CPU package (every process on it, so a busy shared machine inflates it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

RAPL_ROOT = Path("/sys/class/powercap")


def parse_nvidia_smi(line: str) -> tuple[float | None, float | None]:
    """'123.45, 4567' (power.draw W, memory.used MiB) -> floats; '[N/A]' -> None."""
    parts = [p.strip() for p in line.split(",")]
    out: list[float | None] = []
    for part in parts[:2]:
        try:
            out.append(float(part))
        except ValueError:
            out.append(None)
    while len(out) < 2:
        out.append(None)
    return out[0], out[1]


# Orin (JetPack 5/6) prints "VDD_IN 4966mW/4966mW"; older Jetsons "POM_5V_IN 3456/3456" (milliwatts, no unit)
_TEGRA_POWER = re.compile(r"\b(VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/")
_TEGRA_RAM = re.compile(r"\bRAM\s+(\d+)/(\d+)MB")


def parse_tegrastats(line: str) -> tuple[float | None, float | None]:
    """A tegrastats line -> (module input power W, RAM used MiB). Orin prints VDD_IN, older Jetsons POM_5V_IN."""
    power = _TEGRA_POWER.search(line)
    ram = _TEGRA_RAM.search(line)
    return (int(power.group(2)) / 1e3 if power else None, float(ram.group(1)) if ram else None)


def mean_power_energy(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Joules in [start, end] from (time, watts) samples: mean of the samples inside the window (or of the two
    nearest around it when the window is shorter than the sampling interval) times the window's length."""
    inside = [w for t, w in samples if start <= t <= end]
    if not inside:
        before = [w for t, w in samples if t < start][-1:]
        after = [w for t, w in samples if t > end][:1]
        inside = before + after
    if not inside or end <= start:
        return None
    return sum(inside) / len(inside) * (end - start)


class StreamMeter:
    """Runs a sampling command in the background and keeps (time, watts, memory MiB) per line it prints."""

    def __init__(self, command: list[str], parse, source: str, covers: str):
        self.command, self.parse, self.source, self.covers = command, parse, source, covers
        self.samples: list[tuple[float, float]] = []
        self.memory_mib: list[float] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> StreamMeter:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.process.stdout:
            watts, mib = self.parse(line)
            now = time.perf_counter()
            if watts is not None:
                self.samples.append((now, watts))
            if mib is not None:
                self.memory_mib.append(mib)

    def begin(self) -> float:
        return time.perf_counter()

    def end(self, mark: float):
        stop = time.perf_counter()

        def joules() -> float | None:
            time.sleep(0.25)  # let the sample that closes the window arrive
            return mean_power_energy(list(self.samples), mark, stop)

        return joules

    def peak_memory_mib(self) -> float | None:
        return max(self.memory_mib) if self.memory_mib else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class RaplMeter:
    """The CPU package energy counter (microjoules, wraps at max_energy_range_uj)."""

    source = "rapl"
    covers = "CPU package (all processes on it)"

    def __init__(self, domain: Path):
        self.domain = domain
        self.range_uj = int((domain / "max_energy_range_uj").read_text())

    def start(self) -> RaplMeter:
        return self

    def _read(self) -> int:
        return int((self.domain / "energy_uj").read_text())

    def begin(self) -> int:
        return self._read()

    def end(self, mark: int):
        delta = self._read() - mark
        if delta < 0:  # the counter wrapped
            delta += self.range_uj
        return lambda: delta / 1e6

    def peak_memory_mib(self) -> None:
        return None

    def stop(self) -> None:
        pass


def rapl_domain(root: Path = RAPL_ROOT) -> Path | None:
    """The first readable package-level RAPL domain (intel-rapl:N; AMD CPUs expose theirs under the same name)."""
    if not root.is_dir():
        return None
    for domain in sorted(root.glob("intel-rapl:*")):
        if domain.name.count(":") != 1:
            continue  # sub-domains (core, uncore, dram) are inside the package figure
        counter = domain / "energy_uj"
        if counter.is_file() and os.access(counter, os.R_OK):
            try:
                int(counter.read_text())
                return domain
            except (OSError, ValueError):
                continue
    return None


def select_meter(device: str, gpu_index: int = 0):
    """(meter or None, reason when None). Jetson first (its board figure covers CPU and GPU alike)."""
    if shutil.which("tegrastats"):
        return StreamMeter(["tegrastats", "--interval", "100"], parse_tegrastats, "tegrastats VDD_IN",
                           "whole Jetson module input power"), ""
    if device == "cuda":
        if shutil.which("nvidia-smi"):
            command = ["nvidia-smi", "--query-gpu=power.draw,memory.used", "--format=csv,noheader,nounits",
                       "-lms", "100", "-i", str(gpu_index)]
            return StreamMeter(command, parse_nvidia_smi, "nvidia-smi power.draw", "GPU board"), ""
        return None, "unavailable: nvidia-smi is not on PATH"
    domain = rapl_domain()
    if domain is not None:
        return RaplMeter(domain), ""
    return None, ("unavailable: no readable RAPL counter under /sys/class/powercap (virtual machines and "
                  "non-root users usually have none)")
