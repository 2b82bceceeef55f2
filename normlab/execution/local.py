"""The local executors: epochs over worker processes on this machine, or in this process.

Each worker is a fresh (spawned) process with one torch thread, taking one epoch task at a time
over its own pipe: two one-thread processes train 1.45x faster than one two-thread process
(docs/FACTS.md), and a pipe per worker means a worker that dies (kill -9, the out-of-memory
killer) takes nothing shared with it. The parent watches every busy worker: a death is reported
as that experiment's failed, resumable epoch in one sentence, a fresh worker takes the slot and
the study goes on. Workers exit as soon as their parent is gone, so nothing writes after it.
Workers are kept for the next study of this process (a notebook or a test suite pays the start-up
of torch once) and stopped at exit.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import wait
from pathlib import Path

from .schedule import next_experiment
from .task import EpochResult, EpochTask, Pending, Status, run_epoch_task

POLL_SECONDS = 1.0


def _exit_with_parent() -> None:
    """A daemon thread that ends this worker the moment its parent process ends."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="normlab-parent-watch").start()


def _worker_main(conn, threads: int) -> None:
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe
            return
        if task is None:
            return
        conn.send(run_epoch_task(task))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (", e.g. by the out-of-memory killer" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


class _Worker:
    def __init__(self, ctx, threads: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, threads), daemon=True, name="normlab-worker")
        self.process.start()
        child.close()
        self.task: EpochTask | None = None

    def send(self, task: EpochTask) -> None:
        self.task = task
        self.conn.send(task)

    def stop(self) -> None:
        """Ends the process now: its epoch in flight is lost, its files are whole (atomic writes)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    """`size` one-thread worker processes, each with its own pipe."""

    def __init__(self, size: int, threads: int = 1):
        self.ctx = mp.get_context("spawn")
        self.threads = threads
        self.workers = [_Worker(self.ctx, threads) for _ in range(size)]

    @property
    def size(self) -> int:
        return len(self.workers)

    def healthy(self) -> bool:
        return all(w.process.is_alive() and w.task is None for w in self.workers)

    def replace(self, worker: _Worker) -> None:
        worker.stop()
        self.workers[self.workers.index(worker)] = _Worker(self.ctx, self.threads)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []


_POOL: WorkerPool | None = None


def worker_pool(size: int) -> WorkerPool:
    """The process's pool of `size` workers, started on first use and kept for the next study."""
    global _POOL
    if _POOL is not None and (_POOL.size != size or not _POOL.healthy()):
        discard_pool()
    if _POOL is None:
        _POOL = WorkerPool(size)
    return _POOL


def discard_pool() -> None:
    global _POOL
    if _POOL is not None:
        pool, _POOL = _POOL, None
        pool.stop()


@atexit.register
def _stop_pool_at_exit() -> None:
    if threading.current_thread() is threading.main_thread():  # a second Ctrl-C must not interrupt this
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    try:
        discard_pool()
    except Exception:  # the interpreter is going away; nothing left to report to
        pass


def _died(worker: _Worker, pending: dict[str, Pending]) -> EpochResult:
    task = worker.task
    done = pending[task.name].done
    return EpochResult(task.name, Status.FAILED, done, message=(
        f"the worker process training it died ({describe_exit(worker.process.exitcode)}) during epoch {done + 1}; "
        f"its {done} saved epoch(s) are kept, run the study again with --resume to continue it"))


class LocalExecutor:
    """Epoch tasks over a pool of one-thread worker processes, least advanced experiment first."""

    name = "local"
    seed_rounds = True

    def __init__(self, workers: int, device: str):
        self.workers, self.device = workers, device

    @classmethod
    def from_request(cls, request) -> LocalExecutor:
        return cls(request.workers, request.device)

    def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        if min(self.workers, len(pending)) <= 1:
            yield from InProcessExecutor(self.device).run(pending, out)
            return
        pool = worker_pool(self.workers)
        try:
            yield from self._run(pool, pending, out)
        except BaseException:  # interrupted (or closed early): stop the workers mid-epoch, now
            discard_pool()
            raise

    def _run(self, pool: WorkerPool, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        width = min(pool.size, len(pending))

        def in_flight() -> set[str]:
            return {w.task.name for w in pool.workers if w.task is not None}

        def assign() -> None:
            for i in range(pool.size):
                if pool.workers[i].task is not None or len(in_flight()) >= width:
                    continue
                name = next_experiment(pending, in_flight())
                if name is None:
                    return
                if not pool.workers[i].process.is_alive():  # died after its last result
                    pool.replace(pool.workers[i])
                p = pending[name]
                pool.workers[i].send(EpochTask(name, p.config.to_dict(), str(out / name), self.device,
                                              executor=self.name, processes=width))

        assign()
        while any(w.task is not None for w in pool.workers):
            busy = [w for w in pool.workers if w.task is not None]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=POLL_SECONDS)
            for w in busy:
                result = None
                if w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):  # died mid-send
                        result = None
                if result is None and not w.process.is_alive():
                    result = _died(w, pending)
                    pool.replace(w)
                if result is not None:
                    w.task = None
                    yield result
            assign()


class InProcessExecutor:
    """The pool's schedule in this process, one epoch at a time, with one torch thread as in a
    worker, so a study's numbers are the same whatever --workers is."""

    name = "local"
    seed_rounds = False

    def __init__(self, device: str):
        self.device = device

    def run(self, pending: dict[str, Pending], out: Path) -> Iterator[EpochResult]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a worker: results must not depend on --workers (float sums)
        try:
            while (name := next_experiment(pending, set())) is not None:
                p = pending[name]
                yield run_epoch_task(EpochTask(name, p.config.to_dict(), str(out / name), self.device,
                                               executor=self.name))
        finally:
            torch.set_num_threads(threads)
