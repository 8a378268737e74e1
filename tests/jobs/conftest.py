"""Fixtures shared by the job tests."""

from tests.identity.support import org  # noqa: F401 - the `org` fixture
