"""Size of a deserialised object graph with shared references expanded, for readers of untrusted files.

A YAML document with aliases or an unpickled checkpoint is a DAG: a small file can describe a structure whose
recursive walk (``json.dump``, ``Record.to_dict``, building a config) visits 10^9 nodes. ``expanded_size`` counts
what such a walk would visit without doing it: iterative (no recursion limit), linear in the number of distinct
nodes (the size of each finished container is memoised), and it stops as soon as a bound is passed.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable


class ExpansionLimit(ValueError):
    """``kind`` is 'cycle' (a node contains itself), 'depth' (nested deeper than max_depth) or 'nodes'."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def expanded_size(root: Any, children: Callable[[Any], Iterable | None], max_nodes: int, max_depth: int) -> int:
    """Nodes a recursive walk of ``root`` visits (``children(x)`` is None for a leaf); ExpansionLimit past a bound."""
    if children(root) is None:
        return 1
    done: dict[int, int] = {}               # id -> expanded size of a finished container
    stack = [[root, iter(children(root)), 1]]
    on_path = {id(root)}
    while stack:
        frame = stack[-1]
        for child in frame[1]:
            kids = children(child)
            if kids is None:
                frame[2] += 1
            elif id(child) in done:
                frame[2] += done[id(child)]
            elif id(child) in on_path:
                raise ExpansionLimit("cycle")
            else:
                if len(stack) >= max_depth:
                    raise ExpansionLimit("depth")
                stack.append([child, iter(kids), 1])
                on_path.add(id(child))
                break
            if frame[2] > max_nodes:
                break
        else:
            stack.pop()
            on_path.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
        if frame[2] > max_nodes or (stack and stack[-1][2] > max_nodes):
            raise ExpansionLimit("nodes")
    return done[id(root)]
