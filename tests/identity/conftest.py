"""Fixtures shared by the identity tests."""

from tests.identity.support import org  # noqa: F401 - the `org` fixture
