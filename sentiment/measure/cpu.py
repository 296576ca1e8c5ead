"""CPU seconds of the machine and of one process with its children: who used the cores during a
measurement (the model-alone ceiling, a k6 run of the stack)."""

from __future__ import annotations


def machine_cpu_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "system", "nice", "irq", "softirq"))


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (Triton's Python-backend stubs)."""
    import psutil

    try:
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        for child in process.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0
