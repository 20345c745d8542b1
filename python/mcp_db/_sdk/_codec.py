"""Stored messages in and out: tags per message class, and rebuilding messages without
validating them twice (see ``src/construct.rs``).

The fast path is used for a message class only if nothing validation would do can be
missed: every field holds plain JSON (no nested models), no field has an alias, and the
class has no validators. Anything else, or any surprise at run time, goes through
pydantic's validation as usual.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import from_json

from mcp_db._core import construct_models

_PLAIN = (str, int, float, bool, type(None), Any)


def _plain(annotation: Any) -> bool:
    if annotation in _PLAIN:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return all(isinstance(a, _PLAIN[:-1]) for a in args)
    if origin is typing.Annotated:
        return _plain(args[0])
    if origin in (typing.Union, types.UnionType, list, dict):
        return all(_plain(a) for a in args)
    return False


def constructible(cls: type[BaseModel]) -> bool:
    decorators = cls.__pydantic_decorators__
    if any(
        (
            decorators.validators,
            decorators.field_validators,
            decorators.root_validators,
            decorators.model_validators,
        )
    ):
        return False
    return all(
        f.alias in (None, name) and _plain(f.annotation) for name, f in cls.model_fields.items()
    )


class RunDecoder:
    """Decodes runs (JSON arrays) of one message class."""

    def __init__(self, cls: type[BaseModel], root: type[BaseModel] | None = None) -> None:
        self.cls = cls
        self.root = root
        self.fast = constructible(cls)
        self.fields = frozenset(cls.model_fields)
        self.required = frozenset(n for n, f in cls.model_fields.items() if f.is_required())
        self.extra_allowed = cls.model_config.get("extra") == "allow"
        self.adapter: TypeAdapter[list[Any]] = TypeAdapter(list[cls])  # type: ignore[valid-type]

    def __call__(self, data: bytes) -> list[Any]:
        if self.fast:
            try:
                items = from_json(data)
                return construct_models(
                    self.cls, items, self.fields, self.required, self.extra_allowed, self.root
                )
            except ValueError:
                pass  # not what this store writes: validate it properly below
        messages = self.adapter.validate_json(data)
        if self.root is None:
            return messages
        construct = self.root.model_construct
        return [construct(root=m) for m in messages]


class Codec:
    """The four JSON-RPC message classes of one SDK line, each with a one-letter tag."""

    def __init__(
        self, request: Any, notification: Any, response: Any, error: Any, root: Any = None
    ):
        self.tags: dict[type[Any], str] = {
            request: "q",
            notification: "n",
            response: "r",
            error: "e",
        }
        self.classes = {tag: cls for cls, tag in self.tags.items()}
        self.root = root
        self.runs = {tag: RunDecoder(cls, root=root) for tag, cls in self.classes.items()}

    def tag(self, message: Any) -> str:
        tag = self.tags.get(type(message))
        if tag is None:  # a subclass: rare, so the slow path is fine
            tag = next(t for cls, t in self.tags.items() if isinstance(message, cls))
        return tag

    def decode(self, tag: str, data: bytes) -> Any:
        message = self.classes[tag].model_validate_json(data)
        return message if self.root is None else self.root.model_construct(root=message)

    def decode_run(self, tag: str, data: bytes) -> list[Any]:
        """Messages of one kind from a JSON array of them, as the SDK would have them."""
        return self.runs[tag](data)
