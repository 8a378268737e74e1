"""Runtime settings: typed values declared by their owning module, changed while Keel runs,
read from memory, audited and propagated to every process."""

from keel.settings.module import settings_module
from keel.settings.module import store_of as store
from keel.settings.spec import MASK, Reading, Setting, Source, declare, declared

__all__ = [
    "MASK",
    "Reading",
    "Setting",
    "Source",
    "declare",
    "declared",
    "settings_module",
    "store",
]
