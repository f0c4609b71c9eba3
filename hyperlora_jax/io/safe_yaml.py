"""Safe, bounded YAML reading for ``args.yaml`` files of official T2L / D2L runs (untrusted files from outside).

* No Python object is built: a ``yaml.SafeLoader`` subclass that reads ``!!python/object/apply:X [arg]`` as ``arg``
  (the reference pickles its enums this way) and ``!!python/tuple`` as a tuple; any other Python tag is refused.
* Bounded: at most ``MAX_BYTES`` of file, and the composed node graph may expand (every alias counted at each use, as
  ``json.dump`` or a recursive walk would visit it) to at most ``MAX_NODES`` nodes, nested at most ``MAX_DEPTH``
  levels, without cycles. A 4 KB "billion laughs" document is refused before anything is constructed.
"""
from __future__ import annotations

import os
from typing import Any

import yaml

from hyperlora_jax.io.expansion import ExpansionLimit, expanded_size

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 200


class YamlError(ValueError):
    """A YAML file that cannot be read safely (one line naming the file and the problem)."""


class _SafeArgsLoader(yaml.SafeLoader):
    """SafeLoader that reads ``!!python/object/apply:X [arg]`` as ``arg`` and ``!!python/tuple`` as a tuple."""


def _construct_apply(loader, suffix, node):
    if isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        args = mapping.get("args", [])
    else:
        args = [loader.construct_scalar(node)]
    if len(args) != 1:
        raise yaml.constructor.ConstructorError(None, None, f"!!python/object/apply:{suffix} with {len(args)} "
                                                f"arguments is not supported (only enum-like single values)",
                                                node.start_mark)
    return args[0]


_SafeArgsLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _construct_apply)
_SafeArgsLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def _children(node):
    """The child nodes of a YAML node (None for a scalar)."""
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return None


def check_expansion(root, where: str = "YAML document") -> int:
    """The node count of ``root`` with every alias expanded; YamlError past MAX_NODES / MAX_DEPTH or on a cycle."""
    try:
        return expanded_size(root, _children, MAX_NODES, MAX_DEPTH)
    except ExpansionLimit as e:
        raise YamlError({"cycle": f"{where}: recursive alias (a node contains itself)",
                         "depth": f"{where}: nested deeper than {MAX_DEPTH} levels",
                         "nodes": f"{where}: expands to more than {MAX_NODES} nodes once aliases are resolved "
                                  f"(alias bomb?)"}[e.kind]) from None


def load_yaml(path: str) -> Any:
    """Parses a YAML file without building Python objects; refuses unknown tags and oversized documents (YamlError,
    a ValueError)."""
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise YamlError(f"{path}: {size} bytes, more than the {MAX_BYTES} accepted for a YAML arguments file")
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text ({e})") from None
    loader = _SafeArgsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise YamlError(f"{path}: cannot read YAML safely: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlError(f"{path}: YAML nested too deeply") from None
    except YamlError:
        raise
    except ValueError as e:  # a scalar Python refuses: an over-long integer, a date like 2020-13-45
        raise YamlError(f"{path}: cannot read YAML safely: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
