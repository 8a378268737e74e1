"""The protection module's registration with the kernel (the guard itself is the core's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keel.core.modules import KeelModule, MiddlewareSpec, Slot

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["protection_module"]


def protection_module() -> KeelModule:
    """Protection's contributions: the rate-limit middleware, and closing its storage."""
    from keel.protection.ratelimit import RateLimiter, RateLimitMiddleware, RatePolicies

    # One limiter per kernel (a module is made per kernel), however often the chain is built.
    limiters: list[RateLimiter] = []

    def options(keel: Keel) -> dict[str, Any]:
        config = keel.config
        if not config.rate_limit_enabled:
            return {"policies": None}
        if not limiters:
            limiters.append(RateLimiter.from_config(config, registry=keel.metrics_registry))
        return {"policies": RatePolicies.from_config(config), "limiter": limiters[0]}

    async def close(_keel: Keel) -> None:
        for limiter in limiters:
            await limiter.aclose()

    return KeelModule(
        name="protection",
        middleware=(MiddlewareSpec(Slot.RATE_LIMIT, RateLimitMiddleware, options),),
        on_shutdown=(close,),
    )
