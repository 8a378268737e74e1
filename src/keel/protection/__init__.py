"""Protection: the guard every request passes (Host/Origin, CORS, body limits, headers) and
rate limits."""

from keel.protection.cors import CorsPolicy
from keel.protection.guard import GuardMiddleware
from keel.protection.headers import CONTENT_SECURITY_POLICY, security_headers
from keel.protection.hosts import HostPolicy
from keel.protection.limits import JsonDepthScanner, LimitedReceive
from keel.protection.proxy import TrustedProxies
from keel.protection.ratelimit import (
    RateLimited,
    RateLimiter,
    RateLimitMiddleware,
    RatePolicies,
    RatePolicy,
)
from keel.protection.ratestore import FixedWindowMemoryStorage

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CorsPolicy",
    "FixedWindowMemoryStorage",
    "GuardMiddleware",
    "HostPolicy",
    "JsonDepthScanner",
    "LimitedReceive",
    "RateLimitMiddleware",
    "RateLimited",
    "RateLimiter",
    "RatePolicies",
    "RatePolicy",
    "TrustedProxies",
    "security_headers",
]
