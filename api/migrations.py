"""Numbered migrations from the `sql` package, applied in order and recorded once.

A migration file `NNNN_name.sql` holds one or more statements separated by `;` at the end
of a line. The target database is bound as `{database:Identifier}`; statements must be
idempotent (`IF NOT EXISTS`), so a crash between applying and recording is harmless.
Concurrent migrators (several server-mode processes starting at once) are not serialised.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from api.warehouse import Warehouse, check_identifier
from schemas.events import utcnow

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SPLIT = re.compile(r";\s*(?:\n|$)")


class MigrationError(Exception):
    """A migration file is malformed or numbered twice: fix the file in `sql/`."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    statements: tuple[str, ...]
    checksum: str


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def load_migrations() -> list[Migration]:
    found: dict[str, Migration] = {}
    for entry in resources.files("sql").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        text = entry.read_text(encoding="utf-8")
        statements = tuple(s.strip() for s in _SPLIT.split(_strip_comments(text)) if s.strip())
        version = match.group(1)
        if version in found:
            raise MigrationError(f"two migrations numbered {version}")
        found[version] = Migration(version, entry.name, statements, hashlib.sha256(text.encode()).hexdigest()[:16])
    return [found[v] for v in sorted(found)]


BOOTSTRAP = (
    "CREATE DATABASE IF NOT EXISTS {database:Identifier}",
    """CREATE TABLE IF NOT EXISTS {database:Identifier}.schema_migrations
(
    version     String,
    name        String,
    checksum    String,
    applied_at  DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version""",
)


def applied_versions(warehouse: Warehouse, database: str) -> set[str]:
    rows = warehouse.query(
        "SELECT DISTINCT version FROM {database:Identifier}.schema_migrations",
        {"database": database},
    )
    return {r["version"] for r in rows}


def migrate(warehouse: Warehouse, database: str) -> list[str]:
    """Create the database if needed and apply every migration not yet recorded.

    Returns the file names applied, in order; an up-to-date database gives `[]`."""
    check_identifier(database)
    params = {"database": database}
    for statement in BOOTSTRAP:
        warehouse.command(statement, params)
    done = applied_versions(warehouse, database)
    applied = []
    for migration in load_migrations():
        if migration.version in done:
            continue
        for statement in migration.statements:
            warehouse.command(statement, params)
        warehouse.insert(
            database,
            "schema_migrations",
            ("version", "name", "checksum", "applied_at"),
            [(migration.version, migration.name, migration.checksum, utcnow())],
        )
        applied.append(migration.name)
    return applied
