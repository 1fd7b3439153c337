"""The error hierarchy: every message names what failed, where and how often."""

from __future__ import annotations

from dataclasses import dataclass


class ChurnError(Exception):
    """Base of every error churn-ops raises on purpose; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class ContractViolation:
    """One failed rule of a data contract: which table and column, which rule, how many rows."""

    table: str
    column: str
    rule: str
    count: int
    detail: str = ""

    def __str__(self) -> str:
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.table}.{self.column}: {self.rule} failed for {self.count:,} rows{suffix}"


class DataContractError(ChurnError):
    """A table broke its data contract; carries every violation, not just the first."""

    def __init__(self, table: str, violations: list[ContractViolation]):
        self.table = table
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(
            f"data contract failed for {table}: {len(violations)} rule(s) broken\n{lines}"
        )


class SourceDataMissing(ChurnError):
    """An expected input (source table, feature table, registry) is not there yet."""


class InsufficientHistory(SourceDataMissing):
    """The source does not reach far enough back for a time-split training at this as-of day
    (the message names the first as-of day that has enough)."""


class FeatureStoreError(ChurnError):
    """Feast was asked for something it cannot answer (unknown service, no registry, …)."""


class ImportMappingError(ChurnError):
    """A user's import mapping file is malformed."""


class ImportFileError(ChurnError):
    """A file to import is missing, of an unsupported kind, empty, corrupt or unreadable."""


@dataclass(frozen=True)
class DefinitionProblem:
    """One thing wrong with a feature definition: the file, what (feature, view or service), why."""

    file: str
    subject: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.subject}: {self.problem}"


class FeatureDefinitionError(ChurnError):
    """``feature_repo/features.yaml`` does not agree with itself or with the SQL; carries every problem."""

    def __init__(self, problems: list[DefinitionProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"feature definitions refused: {len(problems)} problem(s), nothing applied\n{lines}"
        )
