"""Balanced partition of a layer's filters by community detection on a co-activation graph.

NoNN (Bhardwaj, Suda, Marculescu 2019) splits a teacher's last convolutional filters into K
disjoint groups, one per student, so that filters that fire together on the same images land
in the same group: each student then learns one coherent part of the teacher's knowledge, and
the students need not talk to each other until the final layer.

The graph: one node per filter; the edge weight between filters i and j is the paper's
"activation hubs" rule summed over real images x,

    w_ij = sum_x a_i(x) a_j(x) / (|a_i(x) - a_j(x)| + eps),

where a_i(x) is filter i's average activation on image x: large when both fire strongly and
alike. To keep community detection fast on ~1,000 filters only each node's ``neighbours``
strongest edges are kept (a k-nearest-neighbour graph, symmetrised).

Communities come from networkx's Louvain modularity method (seeded, so deterministic). Louvain
does not know K and its communities differ in size, while NoNN wants K equally sized students;
so communities are merged into K groups (greedily, the pair with the best modularity gain
whose union fits in C/K filters), then nodes move from over-full to under-full groups, the one
losing least in-group weight first, until sizes differ by at most one.

numpy and networkx only (networkx is in the ``train`` extra): no torch, no model here.
"""

from __future__ import annotations

import numpy as np

#: Images are processed in chunks of this many when summing the pairwise weights.
_CHUNK = 64


def coactivation_matrix(activations: np.ndarray, eps: float = 0.05) -> np.ndarray:
    """The dense (C, C) activation-hubs weights of (N, C) per-image filter activations.

    Activations are scaled by their overall mean first, so ``eps`` means the same for any
    layer; it bounds the weight of a pair that happens to fire equally on one image (the
    rule's 1/|a_i - a_j| is heavy-tailed: with a tiny eps a few coincidences across blocks
    outweigh consistent co-activation). The diagonal is zero.
    """
    acts = np.asarray(activations, np.float64)
    if acts.ndim != 2 or len(acts) == 0:
        raise ValueError(f"activations must be (images, filters), got {acts.shape}")
    acts = np.maximum(acts, 0.0) / max(float(np.abs(acts).mean()), 1e-12)
    c = acts.shape[1]
    weights = np.zeros((c, c))
    for i in range(0, len(acts), _CHUNK):
        a = acts[i : i + _CHUNK]
        weights += (
            a[:, :, None] * a[:, None, :] / (np.abs(a[:, :, None] - a[:, None, :]) + eps)
        ).sum(0)
    np.fill_diagonal(weights, 0.0)
    return weights


def knn_graph(weights: np.ndarray, neighbours: int):  # -> networkx.Graph
    """An undirected weighted graph holding each node's ``neighbours`` heaviest edges."""
    import networkx as nx

    c = len(weights)
    graph = nx.Graph()
    graph.add_nodes_from(range(c))
    k = min(neighbours, c - 1)
    if k <= 0:
        return graph
    # stable argsort on the negated weights: ties keep index order, so the graph is
    # deterministic
    top = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    for i in range(c):
        for j in top[i]:
            j = int(j)
            if j != i and weights[i, j] > 0:
                graph.add_edge(i, j, weight=float(weights[i, j]))
    return graph


def _merge(communities: list[list[int]], weights: np.ndarray, k: int, cap: int) -> list[list[int]]:
    """Merge communities down to ``k`` groups: each step joins the pair with the largest
    modularity gain whose union fits in ``cap`` filters (else the two smallest), so groups
    grow from filters that belong together instead of by size alone."""
    groups = sorted(communities, key=lambda m: m[0])
    total = max(float(weights.sum()), 1e-12)
    degree = weights.sum(1)
    while len(groups) > k:
        n = len(groups)
        index = np.zeros(len(weights), int)
        for g, members in enumerate(groups):
            index[members] = g
        onehot = np.eye(n)[index]  # (C, groups)
        between = onehot.T @ weights @ onehot
        deg = onehot.T @ degree
        sizes = np.array([len(m) for m in groups])
        gain = between / total - 2 * np.outer(deg, deg) / total**2
        fits = (sizes[:, None] + sizes[None, :] <= cap) & ~np.eye(n, dtype=bool)
        if fits.any():
            gain = np.where(fits, gain, -np.inf)
            np.fill_diagonal(gain, -np.inf)
            a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        else:
            a, b = (int(i) for i in np.argsort(sizes, kind="stable")[:2])
        merged = sorted(groups[a] + groups[b])
        groups = sorted(
            [g for i, g in enumerate(groups) if i not in (a, b)] + [merged], key=lambda m: m[0]
        )
    while len(groups) < k:  # fewer communities than groups: split the largest in halves
        largest = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
        members = groups.pop(largest)
        groups += [members[: len(members) // 2], members[len(members) // 2 :]]
    return groups


def _balance(groups: list[list[int]], weights: np.ndarray) -> list[list[int]]:
    """Move nodes from the largest to the smallest group until sizes differ by at most one;
    each move takes the node whose pull to its group, less its pull to the target, is least."""
    sets = [set(g) for g in groups]
    while True:
        sizes = [len(s) for s in sets]
        big, small = int(np.argmax(sizes)), int(np.argmin(sizes))
        if sizes[big] - sizes[small] <= 1:
            break
        members = np.array(sorted(sets[big]))
        inside = weights[np.ix_(members, sorted(sets[big]))].sum(1)
        target = weights[np.ix_(members, sorted(sets[small]))].sum(1) if sets[small] else 0.0
        node = int(members[int(np.argmin(inside - target))])
        sets[big].remove(node)
        sets[small].add(node)
    return [sorted(s) for s in sets]


def partition_filters(
    activations: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    neighbours: int = 16,
    resolution: float = 1.0,
) -> list[list[int]]:
    """K disjoint, balanced groups of filter indices (sizes differ by at most one) covering
    every filter; the same activations and ``seed`` always give the same groups.

    ``activations``: (images, filters) average activation of each filter on real images.
    """
    import networkx as nx

    c = np.asarray(activations).shape[1]
    if not 1 <= k <= c:
        raise ValueError(f"cannot split {c} filters into {k} groups")
    weights = coactivation_matrix(activations)
    if k == 1:
        return [list(range(c))]
    graph = knn_graph(weights, neighbours)
    communities = nx.community.louvain_communities(
        graph, weight="weight", resolution=resolution, seed=seed
    )
    groups = _merge([sorted(int(n) for n in com) for com in communities], weights, k, -(-c // k))
    groups = _balance(groups, weights)
    # a canonical order: groups by their smallest filter
    return sorted(groups, key=lambda g: g[0])


def modularity(activations_or_weights: np.ndarray, groups: list[list[int]]) -> float:
    """Modularity of ``groups`` on the dense weight matrix (a (C, C) array) — how much more
    in-group weight than chance; for reports."""
    w = np.asarray(activations_or_weights, np.float64)
    total = w.sum()
    if total <= 0:
        return 0.0
    degree = w.sum(1)
    q = 0.0
    for g in groups:
        idx = np.asarray(g)
        q += w[np.ix_(idx, idx)].sum() / total - (degree[idx].sum() / total) ** 2
    return float(q)
