"""Merging F1's partial updates into state, the way every live-timing consumer must.

After a topic's first (full) message, F1 sends only what changed: nested
dicts keyed by strings. Lists are updated as dicts keyed by the index as a
string (`{"Sectors": {"1": {"Value": "28.1"}}}` updates element 1), and a
`_deleted` list names keys to remove. `merge` applies one update in place:

    state = {}
    for message in messages_of_one_topic:
        merge(state, message["data"])
"""

from __future__ import annotations

from typing import Any


def merge(state: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply `update` to `state` in place and return `state`."""
    for key in update.get("_deleted", ()):
        state.pop(str(key), None)
    for key, value in update.items():
        if key == "_deleted":
            continue
        current = state.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merge(current, value)
        elif isinstance(value, dict) and isinstance(current, list):
            _merge_into_list(current, value)
        else:
            state[key] = value
    return state


def apply(state: dict[str, Any], update: dict[str, Any], *, snapshot: bool) -> dict[str, Any]:
    """A topic's state after one message: a snapshot replaces it, an update merges into it.

    Returns the state to keep from now on. Nothing is copied: the message's
    data becomes part of the state, so apply each message only once.
    """
    return update if snapshot else merge(state, update)


def as_list(value: Any) -> list[Any]:
    """A collection F1 sends as a list in snapshots and as an index-keyed map in updates
    (when no snapshot came first, merging builds the map), in index order."""
    if isinstance(value, dict):
        return [value[key] for key in sorted(value, key=lambda k: int(k) if k.isdigit() else -1)]
    return list(value) if isinstance(value, list) else []


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data (merge changes state in place; copy what you keep)."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def _merge_into_list(items: list[Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key == "_deleted" or not key.isdigit():
            continue
        index = int(key)
        while len(items) <= index:  # F1 may extend a list through a list-as-dict update
            items.append({} if isinstance(value, dict) else None)
        if isinstance(value, dict) and isinstance(items[index], dict):
            merge(items[index], value)
        else:
            items[index] = value
