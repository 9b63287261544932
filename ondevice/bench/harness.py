"""`bench()`: measure latency, memory, accuracy retention and estimated energy of models and artifacts.

Flow: resolve items -> start one worker per (item, thread count), at most `max_workers` at once (items in
groups beyond that) -> import runtimes (in parallel) -> load
models (one at a time) -> warm up -> interleaved timed rounds -> run-peak memory -> accuracy pass over the test
set (one worker per item) -> MAC counting on the eager models -> energy estimates per device profile ->
report.json / report.md / report.html written atomically.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ondevice.io import machine_record, temp_dir

from . import accuracy as acc
from .config import BenchConfig, Data, Item, TorchModelRef, load_data, resolve_items
from .energy import estimate, host_energy_source, weight_bytes_for
from ondevice.progress import Ticker

from .latency import StopRule, chunk_size, interleave, latency_stats, rounds_done
from .profiles import Profile, load_profiles
from .worker import Worker, WorkerError

log = logging.getLogger("ondevice.bench")
SCHEMA_VERSION = 1


def _err(stage: str, e: Exception, threads: int | None = None) -> dict:
    d = {"stage": stage, "threads": threads, "message": str(e), "input_error": bool(getattr(e, "input_error", False))}
    if isinstance(e, WorkerError):
        d["stderr_tail"] = e.stderr_tail[-2000:]
        if e.traceback_text:
            d["traceback"] = e.traceback_text[-2000:]
    return d


def measured_label(machine: dict) -> str:
    return f"measured on {machine.get('cpu_model')} ({machine.get('cores')} cores, {machine.get('os')})"


class _Variant:
    """One (item, threads) worker and what it measured."""

    def __init__(self, idx: int, item: Item, threads: int):
        self.idx, self.item, self.threads = idx, item, threads
        self.worker: Worker | None = None
        self.init: dict = {}
        self.load: dict = {}
        self.warmup: dict = {}
        self.memory: dict = {}
        self.chunk_n = 1
        self.energy_uj: list[int] = []
        self.error: dict | None = None

    @property
    def alive(self) -> bool:
        return self.error is None and self.worker is not None

    @property
    def key(self) -> tuple[int, int]:
        return (self.idx, self.threads)

    def fail(self, stage: str, e: Exception) -> None:
        self.error = _err(stage, e, self.threads)
        log.warning("%s (threads=%d) failed in %s: %s", self.item.label, self.threads, stage, e)
        if self.worker is not None:
            self.worker.kill()


def bench(items: Sequence[Any] = (), *, data: Any = None, teacher: TorchModelRef | None = None,
          student: TorchModelRef | None = None, config: BenchConfig | None = None,
          out_dir: str | Path | None = "bench_out", force: bool = False) -> dict:
    """Benchmark artifacts and eager PyTorch models side by side; returns the report dict.

    items:   artifact paths (.onnx/.pte/.tflite/.mlpackage, or folders of them) and TorchModelRef eager models
    data:    (x_test, y_test) arrays or tensors, a .npz with x and y, or an ondevice.data dataset name; None ->
             synthetic inputs of config.input_shape (latency and memory only)
    teacher: the reference for retention, agreement and KL; student: the fp32 source of the artifacts (its MAC
             count is used for the artifacts' energy estimates)
    out_dir: report.json, report.md and report.html are written there (atomically); None writes nothing. It is
             claimed first (ondevice.outdir): a non-empty folder ondevice does not own is refused unless `force`
    Artifacts: a status is taken from an artifact's record only while the file still has the recorded sha256; a
    changed file is verified again against `student` on `data` when both are given, else its item fails.
    """
    config = config or BenchConfig()
    t_start = time.perf_counter()
    resolved = resolve_items(items, teacher, student)
    profiles = load_profiles(config.profiles)
    ds = load_data(data, input_shape=config.input_shape, input_dtype=config.input_dtype, seed=config.seed,
                   items=resolved, config=config)
    if out_dir is not None:  # inputs are sound: claim the report folder before measuring anything
        from ondevice.outdir import claim

        claim(out_dir, force=force, explicit=True, purpose="bench")
    machine_before = machine_record()
    with temp_dir("bench") as work:
        report = _run(resolved, ds, config, profiles, work, machine_before)
    report["seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        from .report import write_report

        report["files"] = write_report(report, out_dir, plots=config.plots)
    return report


def _broadcast(variants: list[_Variant], cmd: str, timeout: float, per_variant: dict | None = None,
               **kw) -> dict:
    """Send `cmd` to every live variant, then collect the replies (the workers work in parallel)."""
    sent = []
    for v in variants:
        if not v.alive:
            continue
        try:
            v.worker.send({"cmd": cmd, **kw, **((per_variant or {}).get(v.key, {}))})
            sent.append(v)
        except WorkerError as e:
            v.fail(cmd, e)
    replies = {}
    deadline = time.monotonic() + timeout
    for v in sent:
        try:
            replies[v.key] = v.worker.recv(max(1.0, deadline - time.monotonic()), cmd)
        except WorkerError as e:
            v.fail(cmd, e)
    return replies


@dataclass
class _Results:
    """What the groups of workers measured, merged (item index or (item, threads) keys)."""

    infos: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    schedule: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    acc_errors: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)
    graph_errors: dict = field(default_factory=dict)


def _groups(items: list[Item], n_threads: int, max_workers: int) -> list[list[int]]:
    """Item indices in groups of at most max_workers workers (every thread count of an item in one group)."""
    per = max(1, max_workers // n_threads)
    return [list(range(i, min(i + per, len(items)))) for i in range(0, len(items), per)]


def _run(items: list[Item], ds: Data, config: BenchConfig, profiles: list[Profile], work: Path,
         machine_before: dict) -> dict:
    n_lat = min(len(ds), config.latency_samples)
    lat_path, eval_path = work / "latency_inputs.npz", work / "eval_x.npz"
    np.savez(lat_path, **ds.take(n_lat))  # {input name: (n, ...)}
    n_eval = len(ds) if config.accuracy_samples is None else min(len(ds), config.accuracy_samples)
    eval_y = ds.y[:n_eval] if ds.y is not None else None
    np.savez(eval_path, **ds.take(n_eval))
    paths = {"latency": lat_path, "eval": eval_path, "work": work}

    variants = [_Variant(i, it, t) for i, it in enumerate(items) for t in config.threads]
    res = _Results()
    groups = _groups(items, len(config.threads), config.max_workers)
    for g, idxs in enumerate(groups):
        group = [v for v in variants if v.idx in idxs]
        for v in group:
            v.worker = Worker(v.threads, label=f"{v.item.label}@{v.threads}t")
        log.info("group %d/%d: started %d workers for %s x threads %s", g + 1, len(groups), len(group),
                 [items[i].label for i in idxs], list(config.threads))
        try:
            tag = "bench" if len(groups) == 1 else f"bench group {g + 1} of {len(groups)}"
            _measure_group(items, idxs, group, ds, n_eval, paths, config, res, tag)
        finally:
            for v in group:
                if v.worker is not None:
                    v.worker.close()
    machine_after = machine_record()
    return _assemble(items, variants, ds, eval_y, n_lat, n_eval, config, profiles, res, len(groups),
                     machine_before, machine_after)


def _measure_group(items: list[Item], idxs: list[int], variants: list[_Variant], ds: Data, n_eval: int,
                   paths: dict, config: BenchConfig, res: _Results, tag: str = "bench") -> None:
    """Every measurement of one worker group, in order: start, load, describe, warm up, time in interleaved rounds,
    memory, then one accuracy pass and one MAC count per item. A variant whose worker fails a step is marked failed
    there and skipped by the later steps; the others go on."""
    _start_workers(variants, ds, paths, config)
    _load_one_at_a_time(_live(variants), config.timeout_s, tag)
    for v in _live(variants):
        if v.idx not in res.infos:
            info = _ask(v, "info", config.timeout_s)
            if info is not None:
                res.infos[v.idx] = info
    timed = [v for v in _live(variants) if v.init.get("latency_measurable", True)]
    _warm_up(timed, config)
    _time_interleaved([v for v in timed if v.alive], config, res, tag)
    for v in _live(timed):
        v.memory = _ask(v, "memory", config.timeout_s) or {}
    if config.accuracy and not ds.synthetic:  # synthetic inputs have no labels and no meaningful outputs
        passes = Ticker(len(idxs), f"{tag}: accuracy passes over {n_eval} samples")
        for i in idxs:
            cands = _live([v for v in variants if v.idx == i])
            if cands:
                _accuracy_pass(items[i], i, cands[0], paths, config, n_eval, res)
            passes.tick(items[i].label)
    _count_graphs(items, idxs, variants, paths, config.timeout_s, res)


def _live(variants: list[_Variant]) -> list[_Variant]:
    return [v for v in variants if v.alive]


def _ask(v: _Variant, op: str, timeout: float, stage: str | None = None, **kw):
    """One request to a variant's worker; a WorkerError marks the variant failed at `stage` and returns None."""
    try:
        return v.worker.request(op, timeout, **kw)
    except WorkerError as e:
        v.fail(stage or op, e)
        return None


def _start_workers(variants: list[_Variant], ds: Data, paths: dict, config: BenchConfig) -> None:
    """Every worker initialises its engine at once; items without a runtime here keep only their first worker
    (for numerics through the reference evaluator)."""
    init_kw = {v.key: {"engine": _engine(v.item, ds), "threads": v.threads} for v in variants}
    by_key = {v.key: v for v in variants}
    for k, r in _broadcast(variants, "init", config.timeout_s, init_kw, inputs=str(paths["latency"]),
                           batch_size=config.batch_size, carry=config.state).items():
        by_key[k].init = r
    for v in variants:
        if v.alive and not v.init.get("latency_measurable", True) and v.threads != config.threads[0]:
            v.worker.close()
            v.worker = None


def _load_one_at_a_time(variants: list[_Variant], timeout: float, tag: str) -> None:
    """Sequential loads: load times and memory peaks without contention."""
    loading = Ticker(len(variants), f"{tag}: loading")
    for v in variants:
        v.load = _ask(v, "load", timeout) or {}
        if v.load:
            log.info("loaded %s (threads=%d) in %.2f s", v.item.label, v.threads, v.load["load_seconds"])
        loading.tick(v.item.label)


def _warm_up(timed: list[_Variant], config: BenchConfig) -> None:
    """Warm-up queries per variant; their mean sets the chunk size of the timed rounds."""
    for v in timed:
        v.warmup = _ask(v, "warmup", config.timeout_s, min_queries=config.warmup_queries,
                        min_seconds=config.warmup_seconds) or {}
        if v.warmup:
            v.chunk_n = chunk_size(v.warmup["mean_ns"], config.chunk_seconds)


def _time_interleaved(timed: list[_Variant], config: BenchConfig, res: _Results, tag: str) -> None:
    """Timed chunks of every variant in interleaved rounds until the stop rule is met (drift hits all alike)."""
    by_key = {v.key: v for v in timed}

    def run_chunk(key):
        v = by_key[key]
        try:
            r = v.worker.request("chunk", config.timeout_s, n=v.chunk_n)
        except WorkerError as e:
            v.fail("timed queries", e)
            raise
        if r.get("energy_uj") is not None:
            v.energy_uj.append(r["energy_uj"])
        return r["ns"]

    rule = StopRule(config.min_queries, config.min_seconds, config.max_seconds)
    keys = list(by_key)
    log.info("timing %d variants in interleaved rounds (%s mode)", len(keys), config.mode)
    timing = Ticker(len(keys), f"{tag}: timing variants in interleaved rounds")
    progress, schedule = interleave(run_chunk, keys, rule,
                                    on_round=lambda r, p: timing.update(rounds_done(p, rule), f"round {r + 1}"))
    res.progress.update(progress)
    res.schedule.extend(schedule)


def _count_graphs(items: list[Item], idxs: list[int], variants: list[_Variant], paths: dict, timeout: float,
                  res: _Results) -> None:
    """MAC / activation counts of the eager models, by the first live worker of each."""
    for i in idxs:
        if items[i].kind != "pytorch":
            continue
        cands = _live([v for v in variants if v.idx == i])
        if not cands:
            res.graph_errors[i] = "its worker failed"
            continue
        try:
            res.graphs[i] = cands[0].worker.request("graph", timeout, x=str(paths["latency"]))
        except WorkerError as e:
            res.graph_errors[i] = str(e)


def _engine(item: Item, ds: Data) -> dict:
    """The worker's engine spec; an eager model is called the way the data's inputs are structured."""
    return {**item.engine, "structure": ds.structure} if item.kind == "pytorch" else item.engine


def _accuracy_pass(item: Item, i: int, v: _Variant, paths: dict, config: BenchConfig, n_eval: int,
                   res: _Results) -> None:
    """One pass of item i over the evaluation samples in worker v; its outputs (or error) go into res."""
    out_path = paths["work"] / f"outputs_{i}.npy"
    try:
        v.worker.request("predict", config.timeout_s, x=str(paths["eval"]), out=str(out_path),
                         batch_size=max(config.batch_size, 64))
        res.outputs[i] = np.load(out_path)
        log.info("accuracy pass done for %s (%d samples)", item.label, n_eval)
    except WorkerError as e:
        v.fail("accuracy", e)
        res.acc_errors[i] = _err("accuracy", e, v.threads)


def _pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Labels not dominated in (lower latency, higher accuracy)."""
    front = []
    for lab, lat, a in points:
        dominated = any((l2 <= lat and a2 >= a) and (l2 < lat or a2 > a) for _, l2, a2 in points)
        if not dominated:
            front.append(lab)
    return front


def _source_index(items: list[Item]) -> int | None:
    for i, it in enumerate(items):
        if it.role == "student":
            return i
    return None


@dataclass
class _Ctx:
    """What every report item is assembled against."""

    items: list
    config: BenchConfig
    profiles: list
    res: _Results
    eval_y: np.ndarray | None
    mlabel: str
    ref_idx: int | None
    ref_out: np.ndarray | None
    ref_acc: float | None
    ref_label: str | None
    src_idx: int | None
    rapl: tuple


def _context(items, config, profiles, res: _Results, eval_y, machine_before) -> _Ctx:
    outputs = res.outputs
    ref_idx = next((i for i, it in enumerate(items) if it.role == "teacher" and i in outputs), None)
    if ref_idx is None:
        ref_idx = next((i for i, it in enumerate(items) if it.role == "student" and i in outputs), None)
    ref_out = outputs.get(ref_idx) if ref_idx is not None else None
    ref_acc = acc.accuracy(ref_out, eval_y) if (ref_out is not None and eval_y is not None) else None
    return _Ctx(items, config, profiles, res, eval_y, measured_label(machine_before), ref_idx, ref_out, ref_acc,
                items[ref_idx].label if ref_idx is not None else None, _source_index(items), host_energy_source())


def _run_record(v: _Variant, ctx: _Ctx, measurable: bool) -> dict:
    """One (item, threads) run: latency statistics, warm-up, load time, memory, host energy."""
    config = ctx.config
    run: dict[str, Any] = {"threads": v.threads, "status": "ok", "error": v.error,
                           "omp_num_threads": (v.init.get("thread_env") or {}).get("OMP_NUM_THREADS")}
    if v.error:
        run["status"] = "failed"
    elif v.init and not v.init.get("latency_measurable", True):
        run["status"] = "not_measurable"
    pr = ctx.res.progress.get(v.key)
    run["latency"] = None
    if pr is not None and pr.latencies_ns:
        st = latency_stats(pr.latencies_ns, batch_size=config.batch_size, seed=config.seed, n_boot=config.n_boot)
        st.update({"chunks": pr.chunks, "queries_per_chunk": v.chunk_n})
        run["latency"] = st
    run["warmup"] = v.warmup or None
    run["load_seconds"] = v.load.get("load_seconds") if v.load else None
    run["memory"] = None
    if v.load and measurable:
        run["memory"] = {
            "baseline_rss_bytes": v.init.get("baseline_rss_bytes"),
            "load_peak_rss_above_baseline": v.load.get("load_peak_rss_above_baseline"),
            "rss_after_load_above_baseline": v.load.get("rss_after_load_above_baseline"),
            "run_peak_rss_above_baseline": v.memory.get("run_peak_rss_above_baseline") if v.memory else None,
        }
    run["host_energy"] = None
    if v.energy_uj and pr is not None and pr.latencies_ns:
        n_inf = len(pr.latencies_ns) * config.batch_size
        run["host_energy"] = {"label": ctx.mlabel + " (host package counters, all processes)",
                              "joules_per_inference": sum(v.energy_uj) * 1e-6 / n_inf}
    return run


def _accuracy_record(i: int, it: Item, ctx: _Ctx, measurable: bool, reason: str | None) -> dict | None:
    outputs, acc_errors = ctx.res.outputs, ctx.res.acc_errors
    if i in outputs:
        a = acc.retention(outputs[i], ctx.eval_y, ctx.ref_out, ctx.ref_acc, ctx.ref_label)
        a["label"] = ctx.mlabel
        a["evaluated_with"] = (f"{it.target} runtime" if measurable
                               else f"{it.target}'s reference evaluator ({reason})")
        return a
    if i in acc_errors:
        return {"error": acc_errors[i]["message"]}
    return None


def _energy_record(i: int, it: Item, info: dict, ctx: _Ctx) -> dict:
    """Estimated energy per device profile, from the MACs counted on the eager source model."""
    res = ctx.res
    graph_i = i if it.kind == "pytorch" else ctx.src_idx
    graph = res.graphs.get(graph_i) if graph_i is not None else None
    energy: dict[str, Any] = {"estimated": None, "estimated_reason": None, "graph": None, "graph_source": None}
    if graph is not None and it.kind == "artifact" and not info:
        energy["estimated_reason"] = "the artifact could not be loaded and inspected (see errors)"
    elif graph is not None:
        target = None if it.kind == "pytorch" else it.target
        wb, wsrc = weight_bytes_for(graph, it.precision, info.get("inspect"), target)
        if it.kind == "pytorch":
            wsrc = "the eager model's parameters (inspect: weight_bytes)"
        cprec = (info.get("inspect") or {}).get("compute_precision")
        energy.update(graph=graph, weight_bytes=wb, weight_bytes_source=wsrc,
                      graph_source=(f"counted on {ctx.items[graph_i].label} (PyTorch)" if graph_i != i
                                    else "counted on this model (PyTorch)"),
                      estimated=[estimate(p, graph, it.precision, wb, cprec, target) for p in ctx.profiles])
    else:
        energy["estimated_reason"] = (res.graph_errors.get(graph_i) if graph_i is not None and graph_i in
                                      res.graph_errors else "no source PyTorch model to count MACs from: pass the "
                                                            "student (--student) the artifacts were exported from")
    rapl_zones, rapl_reason = ctx.rapl
    energy["measured_host"] = {"available": bool(rapl_zones), "reason": rapl_reason}
    return energy


def _sidecar_summary(it: Item) -> dict | None:
    if not it.sidecar:
        return None
    out = {k: it.sidecar.get(k) for k in ("status", "precision", "target", "size_bytes", "error")}
    ver = it.sidecar.get("verification") or {}
    out["verification"] = {k: ver.get(k) for k in ("n", "sqnr_db", "top1_agreement", "max_abs_err", "accuracy",
                                                   "passed", "criteria", "task") if k in ver} or None
    return out


def _calls_per_query(its: list[_Variant], batch_size: int) -> dict:
    """How many runtime calls one timed query of `batch_size` samples made (more than one: the artifact's static
    batch is smaller, and the latency is that of all the calls)."""
    calls = next((v.warmup.get("runtime_calls_per_query") for v in its if v.warmup), None)
    if not calls:
        return {"runtime_calls_per_query": None}
    how = (f"each query of {batch_size} samples ran {calls} calls of the artifact's static batch"
           if calls > 1 else "one runtime call per query")
    return {"runtime_calls_per_query": calls, "query": how}


def _item_record(i: int, it: Item, variants: list[_Variant], ctx: _Ctx) -> dict:
    its = [v for v in variants if v.idx == i]
    first = next((v for v in its if v.init), None)
    measurable = all(v.init.get("latency_measurable", True) for v in its if v.init)
    reason = next((v.init.get("latency_reason") for v in its if v.init.get("latency_reason")), None)
    info = ctx.res.infos.get(i, {})
    errors = [v.error for v in its if v.error] + ([ctx.res.acc_errors[i]] if i in ctx.res.acc_errors else [])
    src_out = ctx.res.outputs.get(ctx.src_idx) if ctx.src_idx is not None else None
    status, verification = _item_status(it, its, errors, ctx.res.outputs.get(i), src_out, ctx.eval_y,
                                        info.get("inspect"))
    return {
        "label": it.label, "kind": it.kind, "role": it.role, "target": it.target, "precision": it.precision,
        "path": it.path, "ref": it.ref, "weights": it.weights, "status": status, "errors": errors,
        "size_bytes": info.get("size_bytes"), "size_kind": info.get("size_kind"),
        "inspect": _trim(info.get("inspect")), "runtime_memory": info.get("runtime_memory"),
        "sidecar": _sidecar_summary(it), "verification": verification,
        "latency": {"label": ctx.mlabel, "measurable": measurable, "reason": reason,
                    "batch_size": ctx.config.batch_size, **_calls_per_query(its, ctx.config.batch_size)},
        "memory": {"label": ctx.mlabel, "method": first.init.get("memory_method") if first else None,
                   "measurable": measurable,
                   "reason": None if measurable else f"memory of the reference evaluator is not the runtime's "
                                                     f"({reason})",
                   "file_size_bytes": info.get("size_bytes"), "runtime_memory": info.get("runtime_memory")},
        "runs": [_run_record(v, ctx, measurable) for v in its],
        "accuracy": _accuracy_record(i, it, ctx, measurable, reason),
        "energy": _energy_record(i, it, info, ctx),
    }


def _warnings(ds: Data, ctx: _Ctx) -> list[str]:
    out = []
    if ds.synthetic:
        out.append("no data given: latency and memory ran on synthetic inputs (" + "; ".join(
            f"{k}: {v}" for k, v in ds.origin.items()) + "); accuracy is unavailable")
    if ctx.ref_idx is not None and ctx.items[ctx.ref_idx].role != "teacher":
        out.append(f"no teacher given: retention, agreement and KL are relative to {ctx.ref_label}")
    return out


def _assemble(items, variants, ds, eval_y, n_lat, n_eval, config, profiles, res: _Results, n_groups: int,
              machine_before, machine_after) -> dict:
    ctx = _context(items, config, profiles, res, eval_y, machine_before)
    report_items = [_item_record(i, it, variants, ctx) for i, it in enumerate(items)]
    t0 = config.threads[0]
    points = []  # Pareto front at the first thread count
    for r in report_items:
        run = next((x for x in r["runs"] if x["threads"] == t0), None)
        if run and run.get("latency") and r.get("accuracy") and r["accuracy"].get("accuracy") is not None:
            points.append((r["label"], run["latency"]["p50_ms"], r["accuracy"]["accuracy"]))
    chain = [it.label for it in items if it.role == "teacher"] + [it.label for it in items if it.role == "student"] \
        + [it.label for it in items if it.role not in ("teacher", "student")]
    lab = {v.key: v.item.label for v in variants}
    rapl_zones, rapl_reason = ctx.rapl
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "ondevice.bench.report",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "measured_on": ctx.mlabel,
        "config": config.to_dict(),
        "machine": {**machine_before, "loadavg_before": machine_before.get("loadavg"),
                    "loadavg_after": machine_after.get("loadavg")},
        "data": {"source": ds.source, "synthetic": ds.synthetic, "labels": eval_y is not None,
                 "latency_samples": int(n_lat),
                 "accuracy_samples": int(n_eval) if config.accuracy and not ds.synthetic else 0,
                 "sample_shape": list(next(iter(ds.x.values())).shape[1:]),
                 "inputs": {k: {"dtype": str(v.dtype), "sample_shape": list(v.shape[1:]),
                                "origin": ds.origin.get(k, "real")} for k, v in ds.x.items()}},
        "profiles": [p.to_dict() for p in profiles],
        "reference": ctx.ref_label,
        "retention_chain": chain,
        "pareto": {"threads": t0, "front": _pareto(points)},
        "schedule": {"rounds": len(res.schedule), "rotate": True, "groups": n_groups,
                     "max_workers": config.max_workers,
                     "first_rounds": [[f"{lab[k]}@{k[1]}t" for k in rnd] for rnd in res.schedule[:6]],
                     "stop_rule": {"min_queries": config.min_queries, "min_seconds": config.min_seconds,
                                   "max_seconds": config.max_seconds}},
        "host_energy": {"available": bool(rapl_zones), "reason": rapl_reason},
        "warnings": _warnings(ds, ctx),
        "items": report_items,
    }


def verify_item(it: Item, out: np.ndarray | None, source_out: np.ndarray | None, labels: np.ndarray | None,
                inspect: dict | None) -> dict:
    """The status to believe for an artifact: its record's while the file still has the recorded sha256; after a
    change, a fresh verification against the source student on the bench data when both were given."""
    from ondevice import sidecar
    from ondevice.precision import get_precision
    from ondevice.verify import compare, precision_check, thresholds_for

    if it.sidecar_error:
        trust = sidecar.Trust("unverified", f"unverified: {it.sidecar_error}", "invalid record")
    else:
        trust = sidecar.check(it.path, it.sidecar, load=False)
    comparison = None
    if trust.hash in ("changed", "not recorded", "invalid record"):
        if out is not None and source_out is not None and it.precision:
            prec = get_precision(it.precision)
            try:
                cmp = compare(source_out, out, labels, thresholds_for(prec))
            except ValueError as e:  # e.g. the outputs' shapes differ
                return {**trust.after_reverify({"passed": False, "failures": [str(e)]}, len(out)).to_dict(),
                        "comparison": None}
            failure = precision_check(prec, inspect).get("failure")
            if failure:
                cmp.failures.append(failure)
            comparison = cmp.to_dict()
            trust = trust.after_reverify(comparison, cmp.n)
        elif not it.precision:
            trust.reason += "; its precision is unknown without an intact record: export it again"
        elif source_out is not None:
            trust.reason += "; it could not be run here to verify it again (see the item's errors): export it again"
        else:
            trust.reason += ("; pass the test data (--data) and the source student (--student) to verify it again, "
                             "or export it again")
    return {**trust.to_dict(), "comparison": comparison}


def _item_status(it: Item, its: list[_Variant], errors: list[dict], out, source_out, labels,
                 inspect: dict | None) -> tuple[str, dict | None]:
    """("ok" | "partial" | "failed", verification) of one item; a failed verification is one of its `errors`."""
    verification = None
    if it.kind == "artifact":
        verification = verify_item(it, out, source_out, labels, inspect)
        if item_failed_verification(verification):
            errors.append({"stage": "verification", "threads": None,
                           "message": verification["reason"] or f"its record says {verification['status']}"})
            return "failed", verification
    if not errors:
        return "ok", verification
    return ("failed" if all(v.error for v in its) else "partial"), verification


def item_failed_verification(v: dict) -> bool:
    """An artifact known to be bad, or changed (or with a damaged record) and not verified again."""
    return v["status"] in ("failed", "error", "degenerate reference") or (
        v["status"] == "unverified" and v["hash"] in ("changed", "not recorded", "invalid record"))


def _trim(inspect: dict | None) -> dict | None:
    """Keep the inspect() summary small in the report (op counts, dtypes, I/O)."""
    if not inspect:
        return inspect
    keep = {}
    for k, v in inspect.items():
        try:
            from ondevice.io import dumps

            if len(dumps(v, indent=None)) <= 4000:
                keep[k] = v
            else:
                keep[k] = f"<{type(v).__name__} omitted: too large>"
        except Exception:
            keep[k] = str(v)[:200]
    return keep
