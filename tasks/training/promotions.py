"""The promotion history: every alias move, appended to ``$CHURN_HOME/mlflow/promotions.jsonl``.

MLflow keeps no alias history (mlflow#2169). One JSON line per move (:class:`Promotion`: alias,
from and to version, who, why, when), one file per MLflow store. Writers hold
:func:`history_lock` (a file lock beside the history) across the alias move and the append.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from tasks.core.files import file_lock
from tasks.core.settings import Settings
from tasks.core.urls import redact_url
from tasks.training.mlflow_store import RegistryError, default_store_uri, tracking_uri


@dataclass(frozen=True)
class Promotion:
    """One alias move: ``alias`` went from ``from_version`` to ``to_version`` (``None``: unset).

    ``action`` is ``register`` (new challenger), ``promote``, ``approve`` (promoted by a person's
    approval), ``reject`` (a person refused the challenger) or ``rollback``.
    """

    at: datetime
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    by: str
    reason: str
    run_id: str | None
    action: str

    def to_json(self) -> str:
        record = asdict(self)
        record["at"] = self.at.isoformat()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Promotion:
        record = json.loads(line)
        record["at"] = datetime.fromisoformat(record["at"])
        return cls(**record)


def history_path(settings: Settings) -> Path:
    """The append-only promotion history of the configured MLflow store, one JSON object per line.

    ``$CHURN_HOME/mlflow/promotions.jsonl`` for the default store; another store (a server,
    a PostgreSQL database, another SQLite file) keeps its own file beside it, named by a hash of
    its URI without the password (a changed password is the same registry), so two registries
    sharing a data root never mix their alias moves.
    """
    uri = tracking_uri(settings)
    if uri == default_store_uri(settings):
        return settings.mlflow_dir / "promotions.jsonl"
    digest = hashlib.sha256(redact_url(uri).encode()).hexdigest()[:12]
    return settings.mlflow_dir / f"promotions-{digest}.jsonl"


# --- promotion history ---------------------------------------------------------------------


def promotion_history(settings: Settings, *, all_models: bool = False) -> list[Promotion]:
    """Every recorded alias move of the configured model (of every model with ``all_models``),
    oldest first (empty before the first one).

    Raises:
        RegistryError: a line of the history is not a valid record.
    """
    path = history_path(settings)
    if not path.exists():
        return []
    moves = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            moves.append(Promotion.from_json(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"{path} line {number} is not a promotion record: {exc}") from exc
    return moves if all_models else [m for m in moves if m.model == settings.model_name]


def append_history(settings: Settings, moves: list[Promotion]) -> None:
    """Append the moves as one write, flushed and fsynced; a partial write is cut off again."""
    path = history_path(settings)
    data = "".join(move.to_json() + "\n" for move in moves).encode("utf-8")
    with open(path, "ab") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            handle.truncate(size)
            raise


@contextmanager
def history_lock(settings: Settings) -> Iterator[None]:
    """Serialise alias moves (read alias, move it, append) across threads and processes."""
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(settings.mlflow_dir / ".promotions.lock"):
        yield
