"""Where an op came from: the module path and source line of the first graph node calling it, for error messages
that name the op *and* the part of the user's model to change."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

_SOURCE_LINE = r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)'  # a traceback frame and its code line


def source_line(text: str, after: str = "") -> str | None:
    """'file.py:12 in forward: <code>' for the last traceback frame in `text` (the first one following `after`)."""
    frames = re.findall(re.escape(after) + r"\s*" + _SOURCE_LINE if after else _SOURCE_LINE, text)
    if not frames:
        return None
    f, line, fn, code = frames[0] if after else frames[-1]
    return f"{Path(f).name}:{line} in {fn}: {code.strip()}"


def _matches(node, op: str) -> bool:
    target = str(node.target)
    return target == op or target.split(".")[1:2] == [op] or target.endswith(f".{op}") or target == f"aten.{op}"


def locate_op(program, op: str | None, wrapper: str = "model.") -> str | None:
    """'module 'encoder.layer.0' (LSTMCell), file.py:12 in forward: ...' for the first node of `program` (an
    ExportedProgram, or a list of fx graphs) calling `op` ('aten.lstm_cell.default' or just 'lstm_cell'). Module
    paths are the user's: the `wrapper` prefix of ondevice.flatmodel's wrapper is dropped."""
    if not op or program is None:
        return None
    graphs = [program.graph] if hasattr(program, "graph") else list(program)
    if hasattr(program, "run_decompositions"):
        with contextlib.suppress(Exception):
            graphs.append(program.run_decompositions().graph)
    for graph in graphs:
        for node in graph.nodes:
            if node.op != "call_function" or not _matches(node, op):
                continue
            where = []
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, typ = list(stack.values())[-1]
                path = path[len(wrapper):] if wrapper and path.startswith(wrapper) else path
                typ = getattr(typ, "__name__", str(typ).rsplit(".", 1)[-1])
                where.append(f"module {path!r} ({typ})" if path else f"the forward of {typ} itself")
            line = source_line(node.meta.get("stack_trace") or "")
            if line:
                where.append(line)
            return ", ".join(where) or None
    return None
