"""Fixtures shared by the audit tests."""

from tests.identity.support import org  # noqa: F401 - the `org` fixture
