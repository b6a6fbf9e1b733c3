"""Ctrl-C on a program that awaits busy workers: it exits promptly with a single
KeyboardInterrupt traceback, and takes its workers with it."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from support import gone, start_script, wait_until, write_script

KILL_GRACE = 0.5
EVENT_LOOP_REPORTS = {
    "KeyboardInterrupt",
    "asyncio.exceptions.CancelledError",
    "BaseExceptionGroup",
}

BUSY_FUNCTION = """
    import os
    import sys
    import time
    from pathlib import Path

    import anypool

    KILL_GRACE = 0.5


    def busy(pid_file):
        partial = pid_file.with_name(pid_file.name + ".partial")
        partial.write_text(str(os.getpid()))
        os.replace(partial, pid_file)
        time.sleep(60)
"""

ASYNCIO_SCRIPT = (
    BUSY_FUNCTION
    + """
    import asyncio


    async def main(directory):
        async with anypool.Pool(2, kill_grace=KILL_GRACE) as pool:
            await asyncio.gather(
                pool.run(busy, directory / "1.pid"), pool.run(busy, directory / "2.pid")
            )


    if __name__ == "__main__":
        asyncio.run(main(Path(sys.argv[1])))
"""
)

TRIO_SCRIPT = (
    BUSY_FUNCTION
    + """
    import trio


    async def main(directory):
        async with anypool.Pool(2, kill_grace=KILL_GRACE) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, busy, directory / "1.pid")
                nursery.start_soon(pool.run, busy, directory / "2.pid")


    if __name__ == "__main__":
        trio.run(main, Path(sys.argv[1]))
"""
)


@pytest.mark.parametrize("code", [ASYNCIO_SCRIPT, TRIO_SCRIPT], ids=["asyncio", "trio"])
def test_ctrl_c_stops_the_program_and_its_busy_workers(code: str, tmp_path) -> None:
    script = write_script(tmp_path, code)
    process = start_script(script, str(tmp_path))
    try:
        pid_files = [tmp_path / "1.pid", tmp_path / "2.pid"]
        assert wait_until(lambda: all(path.exists() for path in pid_files), timeout=30)
        worker_pids = [int(path.read_text()) for path in pid_files]
        started = time.monotonic()
        # What the terminal does on Ctrl-C: SIGINT to the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=KILL_GRACE + 10)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert elapsed < KILL_GRACE + 2.0
    assert process.returncode != 0
    # One KeyboardInterrupt, reported the way the event loop reports any Ctrl-C: asyncio.run
    # chains it to the main task's CancelledError, trio wraps it in the nursery's group. No
    # error from anypool, nothing from a worker, no "Exception ignored", no warning.
    reported = re.findall(
        r"^[ |]*([\w.]+(?:Error|Exception|Interrupt|Group|Warning))\b", stderr, re.MULTILINE
    )
    assert reported.count("KeyboardInterrupt") == 1, stderr
    assert set(reported) <= EVENT_LOOP_REPORTS, stderr
    assert "Exception ignored" not in stderr
    assert all(gone(pid) for pid in worker_pids)
