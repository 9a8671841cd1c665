"""Zero gradients for the leaves below a backward that sends nothing down, as torch would leave them.

In a gradient penalty's second backward, the activation's gradient op (dx = grad * mask(y)) has a gradient in y
that is zero almost everywhere (the mask is piecewise constant). torch's own activations send that zero as a
tensor, and every layer below runs its backward on it (a conv backward of zeros per layer: a third of a DCGAN
penalty step on CPU); fastsn's activation sends nothing. The parameters below then end the pass with ``.grad``
None where torch leaves zeros, and an optimizer steps a zero gradient (momentum, weight decay) where it skips None.
So the leaves that the pass would have reached get zeros at its end, where nothing else gave them a gradient.
"""
from __future__ import annotations

import torch

# An empty leaf that a Function whose backward may zero-fill takes as an extra input, so that its AccumulateGrad node
# is in the graph of every pass that runs that backward: the engine will execute it only in a pass that accumulates
# into every leaf it reaches (``.backward()`` without ``inputs``). It never gets a gradient.
PASS_PROBE = torch.empty(0, requires_grad=True)

# per running backward pass (graph task id): the autograd nodes walked, the AccumulateGrad nodes found, and whether
# the pass accumulates into every leaf it reaches
_tasks: dict[int, list] = {}


def _accumulates_into(node) -> bool:
    """Whether the running backward pass accumulates into the leaf of this AccumulateGrad node."""
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:  # raised for leaves under autograd.grad(), which accumulates into none
        return False


def _fill_leaves(task: int) -> None:
    """Runs at the end of the pass (an engine callback, still inside it)."""
    _, accumulators, every_leaf = _tasks.pop(task)
    for node in accumulators:
        leaf = node.variable
        # a leaf below only the skipped zeros is outside the pass's graph: the engine would not run its node now
        if leaf.grad is None and (every_leaf or _accumulates_into(node)):
            leaf.grad = torch.zeros_like(leaf)


def zero_fill_leaves_below(node, probe_node=None) -> None:
    """At the end of the running backward pass, give a zero ``.grad`` to each leaf reachable from ``node`` (an
    autograd node whose output gets a zero gradient that is not sent) that is still without one, if the pass
    accumulates into it.

    Args:
        node: the autograd node below which torch would have sent zeros.
        probe_node: the AccumulateGrad node of :data:`PASS_PROBE` among the running node's inputs, where the
            leaves below ``node`` may be outside the pass's graph; None where they are inside it.
    """
    task = torch._C._current_graph_task_id()
    if task not in _tasks:
        _tasks[task] = [set(), [], False]
        torch.autograd.Variable._execution_engine.queue_callback(lambda: _fill_leaves(task))
    walked, accumulators, every_leaf = _tasks[task]
    if not every_leaf and probe_node is not None:
        _tasks[task][2] = _accumulates_into(probe_node)
    stack = [node]
    while stack:
        following = stack.pop()
        if following in walked:
            continue
        walked.add(following)
        if hasattr(following, "variable"):  # an AccumulateGrad node: a leaf
            accumulators.append(following)
        else:
            stack.extend(below for below, _ in following.next_functions if below is not None)
