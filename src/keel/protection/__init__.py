"""Protection: the guard every request passes (Host/Origin, CORS, body limits, headers)."""

from keel.protection.cors import CorsPolicy
from keel.protection.guard import GuardMiddleware
from keel.protection.headers import CONTENT_SECURITY_POLICY, security_headers
from keel.protection.hosts import HostPolicy
from keel.protection.limits import JsonDepthScanner, LimitedReceive
from keel.protection.proxy import TrustedProxies

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CorsPolicy",
    "GuardMiddleware",
    "HostPolicy",
    "JsonDepthScanner",
    "LimitedReceive",
    "TrustedProxies",
    "security_headers",
]
