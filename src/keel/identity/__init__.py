"""Identity: users and passwords (sessions, tokens, keys, roles and tenants follow)."""

from keel.identity.models import User, UserStatus
from keel.identity.module import identity_module
from keel.identity.passwords import PasswordRejected, check_policy, hash_password, verify_password
from keel.identity.service import (
    create_user,
    disable_user,
    get_user_by_email,
    list_users,
    normalize_email,
    prepare_password,
)
from keel.identity.throttle import (
    LoginFailed,
    LoginPolicy,
    LoginThrottled,
    lock_state,
    login,
    unlock,
)

__all__ = [
    "LoginFailed",
    "LoginPolicy",
    "LoginThrottled",
    "PasswordRejected",
    "User",
    "UserStatus",
    "check_policy",
    "create_user",
    "disable_user",
    "get_user_by_email",
    "hash_password",
    "identity_module",
    "list_users",
    "lock_state",
    "login",
    "normalize_email",
    "prepare_password",
    "unlock",
    "verify_password",
]
