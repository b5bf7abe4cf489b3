"""Ctrl-C during a multi-rank generate (issue "Reliability" 1): no hang, and the engine stays exact.

A SIGINT at seeded moments of ``generate`` with TP=2 and DP=2 on CPU: the call either finishes or
raises KeyboardInterrupt (delivered after the current step, when every rank is between steps), and
the next ``generate`` on the same engine returns exactly the undisturbed tokens (a late reply is
never read as a new one). Each case is bounded by the test timeout.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

import pytest

from diffulex import Diffulex, SamplingParams

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", [dict(tensor_parallel_size=2), dict(data_parallel_size=2)], ids=["tp2", "dp2"])
def test_sigint_at_random_moments_never_hangs_and_the_next_call_is_exact(tiny_path, layout):
    with Diffulex(tiny_path("llada2"), block_size=8, accept_threshold=0.0, distributed_timeout_seconds=30,
                  **layout) as llm:
        t0 = time.perf_counter()
        base = [t.token_ids for t in llm.generate(PROMPTS, PARAMS)]
        duration = time.perf_counter() - t0
        rng = random.Random(0)
        interrupted = 0
        for _ in range(6):
            timer = threading.Timer(rng.uniform(0.0, duration), os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()
                out = llm.generate(PROMPTS, PARAMS)
                assert [t.token_ids for t in out] == base
                timer.join()  # a signal that lands after generate returned is caught here too
            except KeyboardInterrupt:
                interrupted += 1
                timer.join()
            assert llm._requests == {} and llm.is_finished()
            assert [t.token_ids for t in llm.generate(PROMPTS, PARAMS)] == base
        assert interrupted >= 1  # the seeded moments do hit some calls


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", [dict(tensor_parallel_size=2), dict(data_parallel_size=2)], ids=["tp2", "dp2"])
def test_a_killed_worker_closes_the_engine_with_a_clear_error_on_every_call(tiny_path, layout):
    import multiprocessing

    from diffulex.engine.workers import WorkerError

    def fault_cycle(kept: list) -> int:
        llm = Diffulex(tiny_path("llada2"), block_size=8, distributed_timeout_seconds=20, **layout)
        port = llm.config.parallel.master_port
        llm.generate(PROMPTS[:1], PARAMS)
        os.kill(llm.workers.processes[0].pid, signal.SIGKILL)
        for _ in range(3):
            try:
                llm.generate(PROMPTS[:1], PARAMS)
            except WorkerError as e:
                assert re.search(r"worker rank 1 died \(signal 9\).*this engine is closed, build a new one", str(e))
                kept.append(e)  # the caught exceptions stay alive on purpose
            else:
                raise AssertionError("generate on an engine with a dead rank returned")
        llm.exit()
        assert multiprocessing.active_children() == [] and not _listening(port)
        return len(os.listdir("/proc/self/fd"))

    kept: list = []
    first = fault_cycle(kept)
    threads = _threads()
    second = fault_cycle(kept)
    # Nothing accumulates: a second fault + exit holds no more descriptors or threads than the first,
    # although all six caught exceptions are still alive.
    assert len(kept) == 6 and second <= first + 2 and _threads() <= threads


def _threads() -> int:
    """Live threads, without multiprocessing's resource-sharer thread (started on demand, kept by design)."""
    return sum("(_serve)" not in t.name for t in threading.enumerate())


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(120)
def test_exit_closes_the_rendezvous_port_and_threads_at_once(tiny_path):
    before = _threads()
    with Diffulex(tiny_path("llada2"), block_size=8, tensor_parallel_size=2) as llm:
        port = llm.config.parallel.master_port
        llm.generate(PROMPTS[:1], PARAMS)
        assert _listening(port)
    assert not _listening(port)  # closed when exit() returns, not at some later garbage collection
    assert _threads() <= before


def test_deferred_sigint_holds_one_ctrl_c_and_gives_way_to_a_second():
    from diffulex.engine.interrupts import StepInterrupted, deferred_sigint

    before = signal.getsignal(signal.SIGINT)
    reached = False
    with pytest.raises(KeyboardInterrupt) as first:
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached = True  # the step's body ran to its end
    assert reached and not isinstance(first.value, StepInterrupted)
    with pytest.raises(StepInterrupted):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.timeout(60)
def test_a_late_reply_is_dropped_by_its_sequence_number(tiny_path):
    """The reply to a command rank 0 gave up on never answers the next command."""
    with Diffulex(tiny_path("llada2"), block_size=8, tensor_parallel_size=2) as llm:
        workers = llm.workers
        base = llm.generate(PROMPTS[:1], PARAMS)
        # An abandoned command: sent, its reply never read (as after an interrupt), then real steps.
        workers.send_to(0, "__sizeof__")
        out = llm.generate(PROMPTS[:1], PARAMS)  # the first reply read is the stale one: dropped by its number
        assert out[0].token_ids == base[0].token_ids


@pytest.mark.timeout(120)
def test_a_killed_driver_leaves_no_worker_and_no_shared_memory(tiny_path, tmp_path):
    """SIGKILL of the driver during a DP=2 generate: its workers die with it, no /dev/shm segment stays."""
    import subprocess
    import sys

    shm = lambda: {p for p in os.listdir("/dev/shm") if p.startswith("torch_")}  # noqa: E731
    before = shm()
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys\nfrom diffulex import Diffulex, SamplingParams\n"
        "if __name__ == '__main__':\n"
        f"    llm = Diffulex({tiny_path('llada2')!r}, data_parallel_size=2, block_size=8)\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        llm.generate([[5, 6, 7, 8]] * 8, SamplingParams(max_tokens=64, ignore_eos=True))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout.readline().strip() == "ready"
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split()]
    time.sleep(1.0)  # mid-generate
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.2)
    assert children and not [c for c in children if os.path.exists(f"/proc/{c}")]
    # Segments are named torch_<creating pid>_...: count only the driver's and its workers' (tests
    # running in parallel processes create and free their own).
    ours = {str(pid) for pid in (proc.pid, *children)}
    assert {p for p in shm() - before if p.split("_")[1] in ours} == set()
