"""Terminal gallery store: SQLite (WAL) source of truth plus a derived hnswlib index."""

from edge.config import StoreSettings
from edge.store.gallery import CitizenRecord, GalleryStore, Match
from edge.store.hashing import ContentHasher, gallery_hash
from sync.changes import (
    Change,
    CitizenDelete,
    CitizenUpsert,
    Dossier,
    DossierDelete,
    DossierStatus,
    DossierUpsert,
)

__all__ = [
    "Change",
    "CitizenDelete",
    "CitizenRecord",
    "CitizenUpsert",
    "ContentHasher",
    "Dossier",
    "DossierDelete",
    "DossierStatus",
    "DossierUpsert",
    "GalleryStore",
    "Match",
    "StoreSettings",
    "gallery_hash",
]
