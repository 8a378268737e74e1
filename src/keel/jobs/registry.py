"""Job kinds: `@job("kind", ...)` registers a function and validates its arguments at enqueue."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ValidationError, create_model

from keel.core.errors import ValidationFailed

__all__ = ["JobSpec", "Permanent", "Transient", "get_spec", "job", "registered"]


class Permanent(Exception):
    """Raise from a job: the failure will not go away by retrying (the job is discarded)."""


class Transient(Exception):
    """Raise from a job: retry, optionally after `retry_after` seconds."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A registered job kind."""

    kind: str
    func: Callable[..., Any]
    queue: str
    max_attempts: int
    timeout: float | None
    priority: int
    backoff_base: float
    backoff_cap: float
    arguments: type[BaseModel]
    is_async: bool

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`args` checked against the function's type hints, as JSON data."""
        try:
            model = self.arguments.model_validate(dict(args))
        except ValidationError as exc:
            raise ValidationFailed(
                f"bad arguments for job {self.kind!r}",
                errors=[
                    {
                        "location": "body",
                        "pointer": "/args/" + "/".join(str(part) for part in error["loc"]),
                        "detail": error["msg"],
                        "code": error["type"],
                    }
                    for error in exc.errors()
                ],
            ) from None
        return model.model_dump(mode="json")

    def call_arguments(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Stored JSON arguments turned back into the function's types."""
        if not self.arguments.model_fields and not args:
            return {}  # a job without arguments: nothing to convert
        model = self.arguments.model_validate(dict(args))
        return {name: getattr(model, name) for name in type(model).model_fields}


_REGISTRY: dict[str, JobSpec] = {}


def job(
    kind: str,
    *,
    queue: str = "default",
    max_attempts: int = 5,
    timeout: float | None = None,
    priority: int = 0,
    backoff_base: float = 1.0,
    backoff_cap: float = 3600.0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(ctx, **args)` as the job `kind`. Its parameters after `ctx` need type
    hints: they validate the arguments when the job is enqueued."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(func)
        parameters = list(inspect.signature(func).parameters.values())[1:]
        fields: dict[str, Any] = {}
        for parameter in parameters:
            annotation = hints.get(parameter.name, Any)
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
        model = create_model(f"{kind}.arguments", __config__={"extra": "forbid"}, **fields)
        _REGISTRY[kind] = JobSpec(
            kind=kind,
            func=func,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            arguments=model,
            is_async=inspect.iscoroutinefunction(func),
        )
        return func

    return register


def get_spec(kind: str) -> JobSpec:
    """The registered kind, or `ValidationFailed`."""
    spec = _REGISTRY.get(kind)
    if spec is None:
        raise ValidationFailed(f"no job kind {kind!r} is registered")
    return spec


def registered() -> dict[str, JobSpec]:
    """Every registered kind."""
    return dict(_REGISTRY)
