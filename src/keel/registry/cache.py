"""The in-memory cache of published versions that consumers read (no query per read).

Each kernel keeps one, reloaded through change notices (topic `registry`) with the history's
highest id as the polled version. `published()` reads the cache of the running kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from keel.core.database import Database
from keel.registry.kinds import registered_kinds
from keel.registry.models import Asset, AssetState, Version

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["Published", "PublishedCache", "cache_of", "published"]

_logger = structlog.get_logger("keel.registry")


@dataclass(frozen=True, slots=True)
class Published:
    """The published version of an asset. Shared by every reader: do not mutate `data`."""

    kind: str
    name: str
    tenant_id: str | None
    version: int
    data: BaseModel
    published_at: datetime | None


Key = tuple[str, str | None, str]


class PublishedCache:
    """Every published version of one deployment, by (kind, tenant, name)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.loads = 0
        self._items: dict[Key, Published] = {}

    def get(self, kind: str, name: str, tenant: str | None = None) -> Published | None:
        """The published version of `kind`/`name` in `tenant` (None: deployment-wide)."""
        return self._items.get((kind, tenant, name))

    def __len__(self) -> int:
        return len(self._items)

    async def reload(self) -> None:
        """Re-read every published version (content parsed by its kind's model)."""
        models = {kind.name: kind.model for kind in registered_kinds()}
        items: dict[Key, Published] = {}
        async with self.db.session() as session:
            # unscoped: the cache holds every tenant's published versions; reads pick one.
            rows = await session.execute(
                select(Asset.kind, Asset.name, Asset.tenant_id, Version)
                .join(Version, Version.id == Asset.head_id)
                .where(Asset.state == AssetState.ACTIVE)
            )
            for kind, name, tenant_id, version in rows:
                model = models.get(kind)
                if model is None:
                    continue  # a kind this process does not register
                try:
                    data = model.model_validate(version.data)
                except ValidationError as exc:
                    # The kind's model changed incompatibly: serve the others, say which.
                    _logger.warning(
                        "published version no longer fits its kind; not served",
                        kind=kind,
                        name=name,
                        version=version.number,
                        error=str(exc)[:300],
                    )
                    continue
                items[(kind, tenant_id, name)] = Published(
                    kind=kind,
                    name=name,
                    tenant_id=tenant_id,
                    version=version.number,
                    data=data,
                    published_at=version.published_at,
                )
        self._items = items
        self.loads += 1


_running: list[PublishedCache] = []


def start_cache(keel: Keel) -> PublishedCache:
    """Create `keel`'s cache and make it the one `published()` reads."""
    cache = PublishedCache(keel.db)
    keel.state["registry.cache"] = cache
    _running.append(cache)
    return cache


def stop_cache(keel: Keel) -> None:
    """Forget `keel`'s cache."""
    cache = keel.state.pop("registry.cache", None)
    if cache in _running:
        _running.remove(cache)


def cache_of(keel: Keel) -> PublishedCache:
    """The cache of a started kernel."""
    cache = keel.state.get("registry.cache")
    if not isinstance(cache, PublishedCache):
        raise RuntimeError("the kernel has not started (no registry cache)")
    return cache


def published(kind: str, name: str, tenant: str | None = None) -> Published | None:
    """The published version of `kind`/`name` in `tenant`, from the running kernel's cache."""
    if not _running:
        raise RuntimeError("no Keel kernel is running in this process")
    return _running[-1].get(kind, name, tenant)
