"""Terminal gallery store: SQLite (WAL) source of truth plus a derived hnswlib index."""
