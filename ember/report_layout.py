"""A layered drawing of a DAG (Sugiyama's method, the way Graphviz's ``dot`` draws): every node on
the layer of its longest path from a source, long edges broken into dummy points one per layer
they cross, each layer ordered by the barycentre of its neighbours (sweeps down and up, which
removes most crossings), then x coordinates pulled toward those barycentres without overlap.

Pure Python, no dependency: ``ember report`` draws the fused graph with it. Every edge points
down (its source's layer is above its target's), which the tests check.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Layout:
    """Positions of a laid-out DAG: ``x[n]``, ``y[n]`` the centre of node ``n``, ``layer[n]``
    its layer, ``routes[(u, v)]`` the points an edge passes through (source and target centres
    at its ends, one dummy point per layer between), ``width``/``height`` the drawing's extent."""

    x: dict
    y: dict
    layer: dict
    routes: dict
    width: float
    height: float
    layers: list = field(default_factory=list)   # per layer, its nodes and dummies in order


def longest_path_layers(nodes: list, edges: list) -> dict:
    """Layer of each node: 0 for a source, else one below its lowest predecessor. ``nodes``
    must be topologically ordered (a graph's node list is)."""
    preds = {n: [] for n in nodes}
    for u, v in edges:
        preds[v].append(u)
    layer = {}
    for n in nodes:
        layer[n] = 1 + max((layer[p] for p in preds[n]), default=-1)
    return layer


def _barycentre_order(layers: list, up: dict, down: dict, sweeps: int) -> None:
    """Reorder each layer in place by the mean position of its neighbours in the layer just
    above (downward sweep) or below (upward sweep); ties keep the current order."""
    def reorder(layer, neighbours, pos):
        keyed = []
        for i, n in enumerate(layer):
            ns = [pos[m] for m in neighbours[n] if m in pos]
            keyed.append((sum(ns) / len(ns) if ns else i, i, n))
        layer[:] = [n for _, _, n in sorted(keyed)]

    for _ in range(sweeps):
        for k in range(1, len(layers)):
            reorder(layers[k], up, {n: i for i, n in enumerate(layers[k - 1])})
        for k in range(len(layers) - 2, -1, -1):
            reorder(layers[k], down, {n: i for i, n in enumerate(layers[k + 1])})


def _place_x(layers: list, up: dict, down: dict, gap: dict, sweeps: int) -> dict:
    """x of every node and dummy: first packed left to right, then pulled toward the mean x of
    its neighbours, alternately above and below, each layer kept in order and apart by
    ``gap[n]`` (half widths of neighbours summed)."""
    x = {}
    for layer in layers:
        cursor = 0.0
        for n in layer:
            cursor += gap[n]
            x[n] = cursor
            cursor += gap[n]

    def pull(layer, neighbours):
        want = []
        for n in layer:
            ns = [x[m] for m in neighbours[n]]
            want.append(sum(ns) / len(ns) if ns else x[n])
        # place left to right at the wanted x, never closer than the gap; then shift the
        # whole layer so its mean error is zero (keeps it centred on its neighbours)
        placed = []
        for i, n in enumerate(layer):
            lo = placed[-1] + gap[layer[i - 1]] + gap[n] if placed else want[0]
            placed.append(max(want[i], lo))
        shift = sum(w - p for w, p in zip(want, placed)) / len(layer)
        for n, p in zip(layer, placed):
            x[n] = p + shift

    for _ in range(sweeps):
        for layer in layers[1:]:
            pull(layer, up)
        for layer in reversed(layers[:-1]):
            pull(layer, down)
    left = min((x[n] - gap[n] for n in x), default=0.0)
    return {n: v - left for n, v in x.items()}


def layered_layout(nodes: list, edges: list, node_width: dict, *, node_height: float = 40,
                   layer_gap: float = 36, node_gap: float = 24, dummy_width: float = 12,
                   sweeps: int = 8) -> Layout:
    """Lay out a DAG top to bottom. ``nodes``: hashable ids in topological order; ``edges``:
    (u, v) pairs (duplicates drawn once); ``node_width[n]``: each node's box width."""
    edges = list(dict.fromkeys((u, v) for u, v in edges if u != v))
    layer = longest_path_layers(nodes, edges)
    depth = 1 + max(layer.values(), default=-1)
    layers = [[] for _ in range(depth)]
    for n in nodes:
        layers[layer[n]].append(n)
    up = {n: [] for n in nodes}
    down = {n: [] for n in nodes}
    gap = {n: (node_width[n] + node_gap) / 2 for n in nodes}
    chains = {}
    for u, v in edges:
        chain = [u]
        for k in range(layer[u] + 1, layer[v]):
            dummy = ("dummy", u, v, k)
            layers[k].append(dummy)
            up[dummy], down[dummy] = [], []
            gap[dummy] = (dummy_width + node_gap / 2) / 2
            chain.append(dummy)
        chain.append(v)
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
        chains[(u, v)] = chain
    _barycentre_order(layers, up, down, sweeps)
    x = _place_x(layers, up, down, gap, sweeps)
    step = node_height + layer_gap
    y = {n: node_height / 2 + layer[n] * step for n in nodes}
    for k, members in enumerate(layers):
        for m in members:
            if m not in y:
                y[m] = node_height / 2 + k * step
    routes = {e: [(x[p], y[p]) for p in chain] for e, chain in chains.items()}
    width = max((x[n] + gap[n] for n in x), default=0.0)
    return Layout(x={n: x[n] for n in nodes}, y={n: y[n] for n in nodes}, layer=layer,
                  routes=routes, width=width, height=depth * step - layer_gap, layers=layers)


def crossings(layout: Layout) -> int:
    """Edge crossings between consecutive layers (segments of routed edges), for tests and for
    judging the ordering: two segments between the same pair of layers cross when their ends
    are in opposite order."""
    segments = {}
    for route in layout.routes.values():
        for (x0, y0), (x1, y1) in zip(route, route[1:]):
            segments.setdefault(y0, []).append((x0, x1))
    count = 0
    for segs in segments.values():
        for i in range(len(segs)):
            for j in range(i + 1, len(segs)):
                (a0, a1), (b0, b1) = segs[i], segs[j]
                if (a0 - b0) * (a1 - b1) < 0:
                    count += 1
    return count
