"""Graph passes: each takes a typed graph (``graph.types`` filled by ``infer_shapes``) and
returns an equivalent typed graph. The Session runs ``fold_constants`` always and ``optimize``
unless asked not to.
"""
from __future__ import annotations

from .ir import Graph


def fold_constants(graph: Graph, known: dict) -> Graph:
    """Replace every node whose outputs are all known at compile time (``known`` comes from
    ``infer_shapes``) by initializers, keeping only the constants something still reads."""
    g = graph.copy()
    kept = []
    for n in g.nodes:
        if all((not o) or o in known for o in n.outputs) and any(n.outputs):
            continue
        kept.append(n)
    g.nodes = kept
    needed = {i for n in kept for i in n.inputs if i} | set(g.outputs)
    g.initializers = {name: known[name] for name in needed
                      if name in known and name not in g.inputs}
    return eliminate_dead_nodes(g)


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs reach a graph output, and unread initializers."""
    live = set(graph.outputs)
    kept = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs if o):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    graph.nodes = kept[::-1]
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in live}
    return graph


def optimize(graph: Graph) -> Graph:
    """The standard pipeline after constant folding."""
    return eliminate_dead_nodes(graph)
