"""Checks made before any training starts: does the model take the data, do its outputs fit the task, do the labels
fit its classes, does the tokenizer fit its embedding table. Each failure is a ConfigError naming the recipe key, the
value and the fix, raised in seconds rather than after an hour of training."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .tree import Tree, call_model, tree_items


def describe_inputs(inputs: Tree) -> str:
    """How a model is called with `inputs`: ``model(input_ids=int64[2, 7], attention_mask=int64[2, 7])``."""
    def one(t: torch.Tensor) -> str:
        return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"

    if isinstance(inputs, dict):
        return "model(" + ", ".join(f"{k}={one(v)}" for k, v in tree_items(inputs)) + ")"
    if isinstance(inputs, (tuple, list)):
        return "model(" + ", ".join(one(v) for _, v in tree_items(inputs)) + ")"
    return f"model({one(inputs)})"


def forward_signature(model: nn.Module) -> str:
    try:
        return f"forward{inspect.signature(model.forward)}"
    except (TypeError, ValueError):
        return "forward(...)"


def input_embedding_rows(model: nn.Module) -> int | None:
    """Rows of the model's token-embedding table (HF get_input_embeddings, else the first nn.Embedding)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = None
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return None if emb is None else int(emb.num_embeddings)


# Exceptions a model raises when it is called with inputs it does not take: a signature mismatch (TypeError), a
# shape or dtype mismatch inside torch (RuntimeError, ValueError), a missing dict key, an attribute a tensor lacks.
# Anything else (an IndexError from a list inside forward, ...) is a bug in the model's code and propagates as it is.
_MISMATCH = (TypeError, RuntimeError, ValueError, KeyError, AttributeError)


def _probe(model: nn.Module, inputs: Tree, role: str, key: str) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    except _MISMATCH as e:  # what a call with the wrong arguments, names, shapes or dtypes raises
        raise ConfigError(
            f"{key}: the {role} ({type(model).__name__}) cannot take the dataset's inputs. It was called as "
            f"{describe_inputs(inputs)} and raised {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            f". Its {forward_signature(model)}. Fix: make the dataset yield inputs named and shaped as forward takes "
            "them (a dict for keyword arguments, a tuple for positional ones), or wrap the model.") from None
    finally:
        model.train(was)


def _label_range(pred: torch.Tensor, y: torch.Tensor, role: str, where: str) -> None:
    if pred.ndim != 2 or y.is_floating_point() or y.ndim != 1 or y.numel() == 0:
        return
    c = int(pred.shape[-1])
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise ConfigError(f"{where}: labels span [{lo}, {hi}] but the {role} predicts {c} classes; give the model "
                          f"num_classes >= {hi + 1} (e.g. kwargs num_classes / num_labels) or fix the labels")


def _all_targets(split) -> Any:
    return getattr(split, "y", None)


def check_model_on_data(model: nn.Module, splits, task, *, role: str, recipe_key: str) -> None:
    """Run `model` on two real training samples and check it against the task and the data (see module docstring)."""
    from .data import trim_padding

    train = splits.train
    inputs, targets = trim_padding(*train.batch(torch.arange(min(2, len(train)))))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tree_map_to(inputs, device)
    _check_vocabulary(model, splits, inputs, role, recipe_key)  # before the probe: a bad id would crash it
    pred = task.prediction(_probe(model, inputs, role, recipe_key))
    try:
        task.views(pred, None, None if targets is None else tree_map_to(targets, device), inputs)
    except ConfigError as e:
        raise ConfigError(f"{recipe_key}: {e}") from None
    _check_labels(task, pred, splits, role)


def tree_map_to(tree: Tree, device) -> Tree:
    from .tree import tree_to

    return tree_to(tree, device)


def _check_labels(task, pred, splits, role: str) -> None:
    heads = getattr(task, "heads", None)
    for name in ("train", "val", "test"):
        y = _all_targets(getattr(splits, name))
        if y is None:
            continue
        if heads:
            for h, (sub, _) in heads.items():
                if sub.name == "classification" and isinstance(y, dict) and h in y:
                    _label_range(pred[h], y[h], role, f"data ({name} split, head {h!r})")
        elif task.name == "classification" and isinstance(y, torch.Tensor):
            _label_range(pred, y, role, f"data ({name} split)")


def _check_vocabulary(model: nn.Module, splits, inputs: Tree, role: str, key: str) -> None:
    rows = input_embedding_rows(model)
    if rows is None:
        return
    pre = splits.info.preprocessing or {}
    vocab = pre.get("vocab_size")
    tok = pre.get("tokenizer", "the tokenizer")
    if vocab is not None and int(vocab) > rows:
        raise ConfigError(f"{key}: {tok} has {vocab} tokens but the {role}'s embedding table has {rows} rows; use the "
                          f"tokenizer the {role} was trained with (data.kwargs.tokenizer), or a model with a "
                          f"vocabulary of at least {vocab}")
    for name, t in tree_items(inputs):
        if name.endswith("input_ids") and t.numel() and int(t.max()) >= rows:
            raise ConfigError(f"{key}: token id {int(t.max())} in input {name!r} is outside the {role}'s embedding "
                              f"table ({rows} rows): the tokenizer does not match the model")
