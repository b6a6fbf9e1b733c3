"""What this machine allows at best, measured in the same run as the contenders."""

from __future__ import annotations

import os
import socket
import statistics
import time


def pipe_round_trip_us(trips: int = 20_000) -> float:
    """Microseconds for one byte to go to another process and back over a socket pair: the
    least any call to a worker can cost."""
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing child
        parent_end.close()
        try:
            while data := child_end.recv(1):
                child_end.sendall(data)
        finally:
            os._exit(0)
    child_end.close()
    try:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(trips):
                parent_end.sendall(b"x")
                parent_end.recv(1)
            runs.append((time.perf_counter() - started) / trips)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    return min(runs) * 1e6


def memcpy_ms(size: int) -> float:
    """Milliseconds to copy ``size`` bytes once, in memory already touched."""
    source = bytearray(os.urandom(1024) * (size // 1024))
    target = bytearray(len(source))
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        target[:] = source
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def measure(big_bytes: int) -> dict[str, float]:
    return {"pipe_round_trip_us": pipe_round_trip_us(), "memcpy_ms": memcpy_ms(big_bytes)}
