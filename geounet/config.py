"""Typed, validated configuration files.

Every config is a pydantic model with ``extra="forbid"``: an unknown key, a wrong type or
an out-of-range value fails before any work starts, with a message naming the file, the
key, the value and what is allowed. Explicit CLI flags win over the file: commands build
the object from ``{**file_values, **flags_that_were_given}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from geounet.errors import ConfigError, brief

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


MAX_PROBLEMS = 10  # validation problems listed in one message; the rest are counted


def describe_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.path = value -> what is allowed`` (at most
    :data:`MAX_PROBLEMS` lines; keys and values cut by :func:`~geounet.errors.brief`)."""
    lines = []
    problems = err.errors()
    for e in problems[:MAX_PROBLEMS]:
        key = brief(".".join(str(p) for p in e["loc"]) or "(top level)", 120)
        value = brief(e.get("input"), as_repr=True)
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}' (value {value}); check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            lines.append(f"{source}: key '{key}' = {value}: {brief(e['msg'], 600)}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{source}: and {len(problems) - MAX_PROBLEMS} more problem(s)")
    return "\n".join(lines)


# Bounds on a configuration file, checked while it is parsed, so that a broken or hostile file
# is refused within milliseconds with a short message. (PyYAML recurses once per nesting level
# and looks ahead over up to 1024 deeper tokens; its aliases share one value, which validation
# and messages would then walk once per use.)
MAX_CONFIG_BYTES = 2**20  # a configuration is a few kB
MAX_DEPTH = 32  # nested mappings and lists; configurations use a handful
MAX_ALIASED_VALUES = 10_000  # values reached through aliases (*name), counting every use


def describe_decode_error(exc: UnicodeDecodeError) -> str:
    """Where UTF-8 decoding failed: the byte, its line and column, its offset."""
    data, start = bytes(exc.object), exc.start
    line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return f"byte 0x{data[start]:02x} at line {line}, column {column} (offset {start}) is not UTF-8"


class _BoundExceeded(yaml.YAMLError):
    """A bound of :func:`read_yaml` was exceeded."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting bound, checked by the scanner (before it looks
    ahead over deeper levels) and by the composer."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def fetch_more_tokens(self) -> None:
        if self.flow_level > MAX_DEPTH or len(self.indents) > MAX_DEPTH:
            self._too_deep()
        super().fetch_more_tokens()

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                self._too_deep()
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _too_deep(self) -> None:
        raise _BoundExceeded(
            f"it is nested more than {MAX_DEPTH} levels deep (at line {self.get_mark().line + 1}); a "
            "configuration needs a few levels: check the indentation and brackets"
        )


def _aliased_values(root: yaml.Node) -> int:
    """How many values the aliases of a parsed document add when each use is expanded.

    Each node is visited once (sizes are remembered by identity), so this costs one pass over
    the parsed document whatever the expansion.

    Raises:
        _BoundExceeded: an alias inside the collection it names (a cycle).
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    repeated = 0

    def size(node: yaml.Node) -> int:
        nonlocal repeated
        key = id(node)
        if key in sizes:  # a second or later use: an alias
            repeated += sizes[key]
            return sizes[key]
        if key in open_nodes:
            raise _BoundExceeded(f"an alias refers to the collection it is in (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        sizes[key] = n
        return n

    size(root)
    return repeated


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and the cause.

    Refused within milliseconds with a short :class:`ConfigError`: a file over
    :data:`MAX_CONFIG_BYTES`, one that is not UTF-8, nesting deeper than :data:`MAX_DEPTH`,
    aliases that repeat more than :data:`MAX_ALIASED_VALUES` values (an alias bomb) or refer
    to themselves, and values Python cannot build (an integer of thousands of digits).
    """
    p = Path(path)
    name = brief(str(p))
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {name} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a configuration is a "
            "few kB: is this the right file?"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {name} is not UTF-8 text: {describe_decode_error(exc)}; save it as UTF-8"
        ) from None
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # refuses control characters at once
        loader.name = p.name  # PyYAML's positions then say "in <file name>, line N"
        node = loader.get_single_node()
        if node is not None and _aliased_values(node) > MAX_ALIASED_VALUES:
            raise _BoundExceeded(
                f"its aliases (*name) repeat more than {MAX_ALIASED_VALUES:,} values (an alias bomb?); "
                "write the values out or use fewer aliases"
            )
        result = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name} is not valid YAML: {brief(str(exc), 600)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ConfigError(f"config file {name} holds a value that cannot be read: {brief(str(exc), 300)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise ConfigError(f"config file {name} must hold a mapping of keys, got {type(result).__name__}")
    return result


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Build ``model`` from ``data``; a :class:`ConfigError` names ``source`` and each bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None


def load_config(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None = None) -> M:
    """Load ``path`` (optional) into ``model``; non-None ``overrides`` (CLI flags) win.

    Overrides may use dotted keys (``"inference.tile_size"``) to reach nested sections.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, leaf = key.split(".")
        for part in parents:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                target[part] = nxt
            target = nxt
        target[leaf] = value
    source = str(path) if path is not None else "command-line options"
    return validate(model, data, source)
