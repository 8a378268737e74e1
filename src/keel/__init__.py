"""Keel: the production kernel for Python web services."""

from keel._version import __version__
from keel.app import Keel, create_app, install
from keel.core.config import Config
from keel.core.errors import KeelError
from keel.core.modules import KeelModule

__all__ = ["Config", "Keel", "KeelError", "KeelModule", "__version__", "create_app", "install"]
