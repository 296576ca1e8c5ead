"""The local stack's supervision rules, with fake processes and a fake clock."""

from pathlib import Path

from sentiment.stack.supervisor import RestartPolicy, Supervisor


class FakeProcess:
    def __init__(self, name: str):
        self.name, self.log_file = name, Path(f"/tmp/{name}.log")
        self.started_at, self.starts, self.running, self.returncode, self.ready = 0.0, 1, True, None, True
        self.clock = 0.0

    @property
    def pid(self) -> int:
        return 1000 + self.starts

    def alive(self) -> bool:
        return self.running

    def is_ready(self) -> bool:
        return self.running and self.ready

    def start(self):
        self.starts += 1
        self.running, self.returncode, self.started_at = True, None, self.clock
        return self

    def stop(self, grace: float = 10.0):
        self.running = False

    def crash(self) -> None:
        self.running, self.returncode = False, -9


def supervisor(*processes, **policy):
    said = []
    watcher = Supervisor(processes, {"transformer"}, RestartPolicy(**policy), lambda p, message: said.append(message))
    return watcher, said


def tick(watcher, processes, now):
    for process in processes:
        process.clock = now
    return watcher.check(now)


def test_a_crashed_part_is_restarted_after_a_doubling_backoff_and_reported_back():
    redis, transformer = FakeProcess("redis"), FakeProcess("transformer")
    watcher, said = supervisor(redis, transformer)
    redis.crash()
    assert tick(watcher, [redis], 1.0) is None and redis.starts == 1
    assert said == ["redis exited (code -9); restarting it in 0.5 s"]
    assert tick(watcher, [redis], 1.4) is None and redis.starts == 1   # still backing off
    assert tick(watcher, [redis], 1.5) is None and redis.starts == 2   # restarted
    assert said[-1].startswith("redis restarted (pid 1002, restart 1 within 60 s)")
    assert tick(watcher, [redis], 1.7) is None and said[-1] == "redis is back: ready 0.2 s after its restart"
    redis.crash()
    tick(watcher, [redis], 2.0)
    assert said[-1] == "redis exited (code -9); restarting it in 1.0 s"   # doubled
    tick(watcher, [redis], 3.0)
    assert redis.starts == 3 and watcher.restarts("redis") == 2


def test_the_backoff_is_capped_and_resets_once_a_part_stays_up():
    triton = FakeProcess("triton")
    watcher, said = supervisor(triton, max_restarts=100)
    now = 0.0
    for _ in range(8):
        triton.crash()
        tick(watcher, [triton], now)
        now += 10.0
        tick(watcher, [triton], now)
    assert said[-2].endswith("restarting it in 10.0 s")  # 0.5, 1, 2, 4, 8, then capped at 10
    tick(watcher, [triton], now + 30.0)                    # up for 30 s: stable
    triton.crash()
    tick(watcher, [triton], now + 31.0)
    assert said[-1].endswith("restarting it in 0.5 s")


def test_a_restart_loop_ends_the_stack():
    triton = FakeProcess("triton")
    watcher, _ = supervisor(triton, max_restarts=5, window_s=60.0)
    now, ending = 0.0, None
    while ending is None and now < 60:
        triton.crash()
        tick(watcher, [triton], now)
        now += 11.0  # past the longest backoff
        ending = tick(watcher, [triton], now)
    assert ending is not None and ending.process is triton
    assert "restart loop" in ending.reason and watcher.restarts("triton") == 5


def test_the_transformers_death_ends_the_stack_at_once():
    transformer, redis = FakeProcess("transformer"), FakeProcess("redis")
    watcher, said = supervisor(redis, transformer)
    transformer.crash()
    ending = tick(watcher, [redis, transformer], 1.0)
    assert ending.process is transformer and ending.reason == "transformer exited (code -9)"
    assert transformer.starts == 1 and said == []
