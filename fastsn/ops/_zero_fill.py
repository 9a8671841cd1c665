"""Zero gradients for the leaves below a backward that sends nothing down, as torch would leave them.

A gradient penalty's second backward reaches the layers below an activation only through its saved mask (its input,
or its output), whose gradient is zero almost everywhere (the mask is piecewise constant). torch's own activations
send that zero as a tensor, and every layer below runs its backward on it (a conv backward of zeros per layer: a
third of a DCGAN penalty step on CPU); fastsn's activation sends nothing. The parameters below then end the pass
with ``.grad`` None where torch leaves zeros, and an optimizer steps a zero gradient (momentum, weight decay) where
it skips None. So the leaves that the pass would have reached get zeros at its end, where nothing else gave them a
gradient.
"""
from __future__ import annotations

from typing import Optional

import torch

# per running backward pass (graph task id): the autograd nodes walked, each with whether the zero must be sent
# through it (see _sends_zeros), the AccumulateGrad nodes found, and whether one of them is executed (only a
# backward() executes AccumulateGrad nodes: an autograd.grad() captures its inputs)
_tasks: dict[int, list] = {}
_ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad  # the type of the nodes that end at a leaf
_SPARSE_CAPABLE = ("EmbeddingBackward0", "EmbeddingBagBackward0")  # nodes whose gradient may be sparse


def _will_execute(node) -> Optional[bool]:
    """Whether the running backward pass executes this node; None where the engine refuses to say (an AccumulateGrad
    node under autograd.grad(), which accumulates into no leaf)."""
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:
        return None


def _observed(node) -> bool:
    """Whether the zero torch sends through this node shows in a way a fill at the end cannot give: a leaf with
    gradient hooks (they would see None, and an optimizer stepping in a post-accumulate hook would skip the
    parameter), or an embedding with sparse gradients (torch leaves a sparse zero there, not a dense one)."""
    if type(node) is _ACCUMULATE_GRAD:
        leaf = node.variable
        return bool(leaf._backward_hooks or getattr(leaf, "_post_accumulate_grad_hooks", None))
    return type(node).__name__ in _SPARSE_CAPABLE and bool(getattr(node, "_saved_sparse", False))


def _walk(below, marks: dict, accumulators: list) -> bool:
    """Depth first from ``below`` over the nodes not walked yet in this pass (a Python walk: about 0.5 us a node,
    once per node and pass): records each node in ``marks`` with whether a node at or under it is
    :func:`_observed`, and collects the AccumulateGrad nodes. Returns the mark of ``below``."""
    stack = [(below, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            marks[node] = marks[node] or any(marks[further] for further, _ in node.next_functions
                                             if further is not None)
            continue
        if node in marks:
            continue
        marks[node] = _observed(node)  # (final for leaves; for the others once their children are marked)
        if type(node) is _ACCUMULATE_GRAD:
            accumulators.append(node)
            continue
        stack.append((node, True))
        stack.extend((further, False) for further, _ in node.next_functions
                     if further is not None and further not in marks)
    return marks[below]


def _fill_leaves(task: int) -> None:
    """Runs at the end of the pass (an engine callback, still inside it)."""
    for node in _tasks.pop(task)[1]:
        leaf = node.variable
        if leaf.grad is None and _will_execute(node):
            leaf.grad = torch.zeros_like(leaf)


def zero_fill_leaves_below(node, edge: int = 0) -> bool:
    """At the end of the running backward pass, give a zero ``.grad`` to each leaf reachable from input ``edge``
    of ``node`` (an autograd node: a custom Function's ``ctx``) that is still without one.

    Args:
        node: the node whose backward returns no gradient for that input.
        edge: the index of that input among the node's ``next_functions``.

    Returns:
        True where the caller should send the zero gradient itself instead: a leaf right below (the zero costs
        nothing there), an autograd.grad() that wants a gradient below that input (it accumulates into no leaf,
        and returns torch's zeros, not None, for any of its inputs down there), or a leaf with gradient hooks or an
        embedding with sparse gradients below (see :func:`_observed`). Nothing is filled in then.
    """
    below = node.next_functions[edge][0]
    if below is None:
        return False
    if type(below) is _ACCUMULATE_GRAD:  # a leaf right below: the zero costs nothing, send it in every kind of pass
        return True
    if not torch._C._will_engine_execute_node(below):
        return False  # backward(inputs=...) or autograd.grad() wanting nothing below
    task = torch._C._current_graph_task_id()
    if task not in _tasks:
        _tasks[task] = [{}, [], False]
        torch.autograd.Variable._execution_engine.queue_callback(lambda: _fill_leaves(task))
    entry = _tasks[task]
    marks, accumulators = entry[0], entry[1]
    found = len(accumulators)
    if marks[below] if below in marks else _walk(below, marks, accumulators):
        return True
    # `below` runs, so in a backward() some leaf below it accumulates (found by this walk or an earlier one); in an
    # autograd.grad() none does (the engine refuses to say for the inputs it captures, and says no for the others)
    entry[2] = entry[2] or any(_will_execute(node) for node in accumulators[found:])
    return not entry[2]
