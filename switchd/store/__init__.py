"""Storage: SQLAlchemy models, migrations and queries, run off the reactor thread."""
