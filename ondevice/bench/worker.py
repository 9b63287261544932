"""A persistent benchmark worker: one process per (item, thread count), driven over stdin/stdout JSON lines.

Run as `python -m ondevice.bench.worker`. The parent (`Worker` below) sends one JSON object per line and reads
one reply per line: {"ok": true, ...} or {"ok": false, "error": ..., "traceback": ...}. The protocol uses a
private duplicate of the original stdout; file descriptor 1 is pointed at stderr so that anything a runtime
prints cannot corrupt the protocol.

Commands, in the order the harness sends them:
    init     {engine, threads, inputs, batch_size, carry}  import the runtime, set threads, load the input samples
                                                    (an .npz of named arrays), take the memory baseline
    load     {}                                     load the model (load peak memory)
    info     {}                                     size, inspect(), runtime_memory()
    warmup   {min_queries, min_seconds}             run until both are reached
    chunk    {n}                                    time n queries, one perf_counter_ns pair around each call
    memory   {}                                     run peak memory
    predict  {x, out, batch_size}                   the first output on the test set (.npz in), written to an .npy
    graph    {x}                                    MACs / activations of an eager model (pytorch items only)

Timing: after loading, every distinct batch is bound once (`engine.bind`: checked, converted, padded feeds and the
bare runtime call), so the timed region is the runtime call and nothing of ondevice's around it.
    exit     {}
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import numpy as np

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")


# --- child side --------------------------------------------------------------------------------------------
def load_named(path: str) -> dict[str, np.ndarray]:
    """{input name: (N, ...) array} from an .npz written by the harness, or {"x": array} from an .npy (in anonymous
    memory, contiguous)."""
    z = np.load(path)
    if isinstance(z, np.ndarray):  # a bare .npy: one unnamed input
        return {"x": np.ascontiguousarray(z)}
    with z:
        return {k: np.ascontiguousarray(z[k]) for k in z.files}


def batches_of(named: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """(nb,) batches of `batch_size` samples cycling through the samples, each {name: (batch_size, ...)}."""
    n = len(next(iter(named.values())))
    nb = max(1, n // batch_size)
    return [{k: np.ascontiguousarray(np.take(v, np.arange(i * batch_size, (i + 1) * batch_size), axis=0,
                                             mode="wrap")) for k, v in named.items()} for i in range(nb)]


class _State:
    def __init__(self) -> None:
        self.engine = None
        self.runner = None
        self.batches: list[dict[str, np.ndarray]] = []
        self.calls: list = []
        self.carry: dict[str, str] = {}
        self.cursor = 0
        self.probe = None
        self.rapl: list = []
        self.rapl_reason: str | None = None

    def cmd_init(self, engine: dict, threads: int, inputs: str, batch_size: int = 1, carry: dict | None = None
                 ) -> dict:
        from .energy import host_energy_source
        from .engines import make_engine
        from .memory import MemoryProbe

        self.engine = make_engine(engine)
        self.engine.prepare()
        self.engine.set_threads(int(threads))
        self.batches = batches_of(load_named(inputs), batch_size)  # real (or labelled synthetic) samples
        self.carry = dict(carry or {})
        self.rapl, self.rapl_reason = host_energy_source()
        self.probe = MemoryProbe()
        return {"pid": os.getpid(), "baseline_rss_bytes": self.probe.baseline, "memory_method": self.probe.method,
                "latency_measurable": self.engine.latency_measurable, "latency_reason": self.engine.latency_reason,
                "distinct_batches": len(self.batches), "host_energy_available": bool(self.rapl),
                "host_energy_reason": self.rapl_reason, "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS}}

    def cmd_load(self) -> dict:
        self.probe.start_phase()
        t0 = time.perf_counter()
        self.runner = self.engine.load()
        dt = time.perf_counter() - t0
        after = self.probe.now_above_baseline()
        peak = self.probe.phase_peak_above_baseline()  # read second: it includes `after`
        self.probe.start_phase()  # the run peak starts from here
        return {"load_seconds": dt, "load_peak_rss_above_baseline": peak, "rss_after_load_above_baseline": after}

    def cmd_info(self) -> dict:
        return self.engine.info()

    def _time(self, n: int) -> list[int]:
        if not self.calls:  # bound once: checked feeds and the bare runtime call, outside the timed region
            self.calls = [self.engine.bind(self.runner, b, self.carry) for b in self.batches]
        calls = self.calls
        nb = len(calls)
        clock = time.perf_counter_ns
        out = [0] * n
        c = self.cursor
        for i in range(n):
            fn = calls[(c + i) % nb]
            t0 = clock()
            fn()
            out[i] = clock() - t0
        self.cursor = (c + n) % nb
        return out

    def cmd_warmup(self, min_queries: int, min_seconds: float) -> dict:
        n, t_start = 0, time.perf_counter()
        lat: list[int] = []
        while n < min_queries or time.perf_counter() - t_start < min_seconds:
            lat.extend(self._time(1))
            n += 1
        tail = lat[len(lat) // 2:]  # the settled half estimates the steady-state latency
        return {"n": n, "seconds": time.perf_counter() - t_start, "mean_ns": float(np.mean(tail)),
                "runtime_calls_per_query": getattr(self.calls[0], "runtime_calls", 1)}

    def cmd_chunk(self, n: int) -> dict:
        from .energy import energy_delta_uj, read_host_energy_uj

        before = read_host_energy_uj(self.rapl) if self.rapl else None
        ns = self._time(int(n))
        energy = energy_delta_uj(before, read_host_energy_uj(self.rapl), self.rapl) if self.rapl else None
        return {"ns": ns, "energy_uj": energy}

    def cmd_memory(self) -> dict:
        return {"run_peak_rss_above_baseline": self.probe.phase_peak_above_baseline(),
                "baseline_rss_bytes": self.probe.baseline, "method": self.probe.method}

    def cmd_predict(self, x: str, out: str, batch_size: int = 64) -> dict:
        from .engines import predict

        y = predict(self.engine, self.runner, load_named(x), batch_size)  # (N, ...) the first (primary) output
        np.save(out, y)
        return {"n": int(len(y)), "shape": list(y.shape)}

    def cmd_graph(self, x: str) -> dict:
        from .energy import count_graph

        if self.engine.target_name != "pytorch":
            raise ValueError("graph counting needs an eager PyTorch model")
        return count_graph(self.runner, self.engine.example(load_named(x)))

    def cmd_exit(self) -> dict:
        return {}


def main() -> None:
    from ondevice.io import dumps

    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints from runtimes go to stderr, never into the protocol
    sys.stdout = sys.stderr
    state = _State()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            cmd = msg.pop("cmd")
            handler = getattr(state, f"cmd_{cmd}", None)
            if handler is None:
                raise ValueError(f"unknown worker command {cmd!r}")
            reply = {"ok": True, **handler(**msg)}
        except Exception as e:
            from ondevice.errors import ArtifactError, InputMismatchError

            cmd = None
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8),
                     "input_error": isinstance(e, (InputMismatchError, ArtifactError))}
        proto.write(dumps(reply, indent=None) + "\n")
        proto.flush()
        if cmd == "exit":
            break


# --- parent side -------------------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    """A worker command failed, the worker crashed, or it timed out. `stderr_tail` holds its last output."""

    def __init__(self, message: str, stderr_tail: str = "", traceback_text: str = "", input_error: bool = False):
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.traceback_text = traceback_text
        self.input_error = input_error  # the inputs or the artifact file are at fault (exit 2), not the runtime


class Worker:
    """Parent-side handle of one worker process with BLAS/OpenMP threads pinned to `threads`."""

    def __init__(self, threads: int, *, label: str = "", env: dict | None = None):
        self.label = label
        self.threads = threads
        full_env = dict(os.environ if env is None else env)
        for k in THREAD_ENV_VARS:
            full_env[k] = str(threads)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "ondevice.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=full_env,
                                     start_new_session=True)
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.dead: str | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            self._stderr.flush()
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - chars))
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def send(self, msg: dict) -> None:
        if self.dead:
            raise WorkerError(self.dead, self.stderr_tail())
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(f"worker {self.label} exited before command {msg.get('cmd')!r}")

    def _exit_description(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "still running"
        if rc < 0:
            try:
                return f"killed by signal {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit code {rc}"

    def _fail(self, message: str) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.dead = f"{message} ({self._exit_description()})"
        raise WorkerError(self.dead, self.stderr_tail())

    def recv(self, timeout: float, what: str = "") -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            self.dead = f"worker {self.label} timed out after {timeout:g} s in {what or 'a command'}"
            raise WorkerError(self.dead, self.stderr_tail()) from None
        if line is None:
            self._fail(f"worker {self.label} crashed during {what or 'a command'}")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise WorkerError(f"{what or 'command'} failed: {reply.get('error')}", self.stderr_tail(),
                              reply.get("traceback", ""), bool(reply.get("input_error")))
        return reply

    def request(self, cmd: str, timeout: float, **kw: Any) -> dict:
        self.send({"cmd": cmd, **kw})
        return self.recv(timeout, cmd)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self.proc.poll() is None and not self.dead:
            try:
                self.request("exit", timeout=10)
            except WorkerError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()


if __name__ == "__main__":
    main()
