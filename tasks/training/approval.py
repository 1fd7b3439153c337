"""A person's decision on a challenger waiting for approval (``promotion_mode = approval``).

The retrain flow pauses for this decision in Prefect (``pause_flow_run(wait_for_input=...)``, the
form in the Prefect UI) or, without a waiting flow, ``churn model approve`` applies it directly.
Either way the same function records it: who decided, their comment and when, as tags on the
version, and the alias move in the promotion history (``approve`` makes the version champion,
``reject`` takes the ``challenger`` alias off it; the version itself stays, with its tags).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from tasks.core.settings import Settings
from tasks.training.mlflow_store import CHALLENGER, RegistryError
from tasks.training.promotions import Promotion
from tasks.training.registry import current_alias, promote, reject_challenger, tag_version

logger = logging.getLogger(__name__)

APPROVAL_TAG_PREFIX = "approval."
PAUSE_KEY_PREFIX = "approve-version-"


@dataclass(frozen=True)
class ApprovalOutcome:
    """What a person decided on ``version`` and the alias move that followed."""

    version: int
    approved: bool
    approver: str
    comment: str
    move: Promotion

    def summary(self) -> str:
        verdict = "approved and promoted to champion" if self.approved else "rejected"
        said = f": {self.comment}" if self.comment else ""
        return f"version {self.version} {verdict} by {self.approver}{said}"


def pause_key(version: int) -> str:
    """The Prefect pause key of a flow run waiting for approval of ``version`` (found by the CLI)."""
    return f"{PAUSE_KEY_PREFIX}{int(version)}"


def apply_approval(
    settings: Settings, version: int, *, approve: bool, approver: str, comment: str
) -> ApprovalOutcome:
    """Record a person's decision on the waiting challenger ``version`` and move the aliases.

    Raises:
        RegistryError: no approver named, or ``version`` is not the current challenger (it was
            promoted, replaced or rejected meanwhile); nothing is changed then.
    """
    approver = approver.strip()
    comment = comment.strip()
    if not approver:
        raise RegistryError("an approval needs the approver's name")
    waiting = current_alias(settings, CHALLENGER)
    if waiting is None or waiting.version != int(version):
        raise RegistryError(
            f"version {version} is not waiting for approval: the {CHALLENGER} is "
            f"{waiting.version if waiting else 'unset'}"
        )
    decision = "approved" if approve else "rejected"
    # Tags first: if the alias move then fails, the version says who decided but nothing moved,
    # and the decision can simply be applied again.
    tag_version(
        settings,
        version,
        {
            f"{APPROVAL_TAG_PREFIX}decision": decision,
            f"{APPROVAL_TAG_PREFIX}by": approver,
            f"{APPROVAL_TAG_PREFIX}comment": comment,
            f"{APPROVAL_TAG_PREFIX}at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    reason = f"{decision} by {approver}" + (f": {comment}" if comment else "")
    if approve:
        move = promote(settings, version, by=approver, reason=reason, action="approve")
    else:
        move = reject_challenger(settings, version, by=approver, reason=reason)
    outcome = ApprovalOutcome(int(version), approve, approver, comment, move)
    logger.info("%s", outcome.summary())
    return outcome
