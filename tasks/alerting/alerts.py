"""What an alert says: :class:`Alert` (aggregates only, never a subscriber) and its builders.

An :class:`Alert` carries feature/PSI/KS rows, gate results and metrics as text. Builders here
turn a flow failure (:func:`failure_alert`) or a retraining's gate results (:func:`gate_alert`)
into one; :mod:`tasks.alerting.render` turns it into Block Kit and plain text, and
:mod:`tasks.alerting.delivery` sends it once (outbox, no repeats).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal
from uuid import UUID

from tasks.alerting.redact import Redactor
from tasks.core.settings import Settings

Severity = Literal["info", "warn", "alert", "retrain", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warn", "alert", "retrain", "error")
KINDS: tuple[str, ...] = ("drift", "performance", "gate", "failure")
ELLIPSIS = "…"
# Field labels that name a person or a subscriber: alerts carry aggregates only.
_PERSONAL_LABELS = frozenset(
    {
        "subscriber",
        "subscriber_id",
        "subscriber_ids",
        "customer_id",
        "account_id",
        "msisdn",
        "phone",
        "phone_number",
        "email",
        "name",
    }
)
_ALERT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------------------------
# The alert


@dataclass(frozen=True)
class Alert:
    """One message for people: what happened, the numbers, what happens next.

    ``fields`` are ordered ``(label, value)`` pairs of aggregate text (a feature's PSI and KS, a
    gate and its shortfall, a metric); a label naming a subscriber or person is refused.
    ``alert_id`` defaults to a hash of kind, title, score date, model version and fields, so the
    same finding raised twice (a rerun of the same day) is recognised and posted once.
    ``reply_to`` is the ``alert_id`` of an earlier message this one answers (a drift incident's
    update or resolution answers its onset): with a bot token it is posted in that message's
    thread once that message was delivered, else on its own.

    Raises:
        ValueError: an unknown severity, an empty kind, title or summary, a personal field
            label, a malformed ``alert_id`` or ``reply_to``, or a ``run_url`` that is not http(s).
    """

    kind: str
    severity: Severity
    title: str
    summary: str
    fields: Sequence[tuple[str, str]] = ()
    model_version: str | None = None
    score_date: date | None = None
    next_step: str | None = None
    run_url: str | None = None
    alert_id: str = ""
    reply_to: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {SEVERITIES}")
        for name in ("kind", "title", "summary"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"alert {name} is empty")
        # Normalise once so that equal alerts hash, render and serialise the same way.
        set_ = object.__setattr__
        set_(self, "kind", str(self.kind).strip())
        set_(self, "title", " ".join(str(self.title).split()))
        set_(self, "summary", " ".join(str(self.summary).split()))
        set_(self, "fields", _normalise_fields(self.fields))
        if self.model_version is not None:
            set_(self, "model_version", str(self.model_version))
        if isinstance(self.score_date, datetime):
            set_(self, "score_date", self.score_date.date())
        elif isinstance(self.score_date, str):
            set_(self, "score_date", date.fromisoformat(self.score_date))
        if self.next_step is not None:
            set_(self, "next_step", " ".join(str(self.next_step).split()) or None)
        if self.run_url is not None and not re.match(r"^https?://\S+$", self.run_url):
            raise ValueError(f"alert run_url must be an http(s) URL, got {self.run_url!r}")
        if not self.alert_id:
            set_(self, "alert_id", _default_alert_id(self))
        elif not _ALERT_ID.match(self.alert_id):
            raise ValueError(
                f"alert_id {self.alert_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.reply_to is not None and not _ALERT_ID.match(self.reply_to):
            raise ValueError(f"reply_to {self.reply_to!r} is not an alert id")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the outbox keeps alerts in this shape)."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "summary": self.summary,
            "fields": [list(pair) for pair in self.fields],
            "model_version": self.model_version,
            "score_date": self.score_date.isoformat() if self.score_date else None,
            "next_step": self.next_step,
            "run_url": self.run_url,
            "reply_to": self.reply_to,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """The inverse of :meth:`to_dict`."""
        return cls(
            kind=data["kind"],
            severity=data["severity"],
            title=data["title"],
            summary=data["summary"],
            fields=[tuple(pair) for pair in data.get("fields", ())],
            model_version=data.get("model_version"),
            score_date=data.get("score_date"),
            next_step=data.get("next_step"),
            run_url=data.get("run_url"),
            alert_id=data.get("alert_id", ""),
            reply_to=data.get("reply_to"),
        )


def _normalise_fields(fields: Sequence[tuple[str, Any]]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for pair in fields:
        if len(pair) != 2:
            raise ValueError(f"alert fields are (label, value) pairs, got {pair!r}")
        label, value = " ".join(str(pair[0]).split()), str(pair[1]).strip()
        if not label:
            raise ValueError(f"alert field label is empty (value {value!r})")
        if label.lower().replace(" ", "_").replace("-", "_") in _PERSONAL_LABELS:
            raise ValueError(
                f"alert field {label!r} names a subscriber or person: alerts carry aggregates only"
            )
        pairs.append((label, value))
    return tuple(pairs)


def _default_alert_id(alert: Alert) -> str:
    identity = [
        alert.kind,
        alert.title,
        alert.score_date.isoformat() if alert.score_date else None,
        alert.model_version,
        [list(pair) for pair in alert.fields],
    ]
    canonical = json.dumps(identity, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def flow_run_url(settings: Settings, flow_run_id: UUID | str | None) -> str | None:
    """The Prefect UI page of a flow run, or None when the UI URL or the run id is unknown."""
    if not settings.prefect_ui_url or not flow_run_id:
        return None
    return f"{settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def failure_alert(
    flow_name: str,
    flow_run_id: UUID | str | None,
    error: BaseException | str | None,
    settings: Settings,
) -> Alert:
    """An ``error`` alert for a failed flow run (for Prefect ``on_failure`` hooks).

    The summary is the exception type and the first line of its message, at most 300
    characters, with every known secret and anything shaped like a Slack URL or token or a
    URL password removed; no traceback.
    """
    if isinstance(error, BaseException):
        kind_of_error = type(error).__name__
        message = str(error)
    else:
        kind_of_error, message = "Error", str(error or "")
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first_line = truncate(Redactor(settings)(first_line), 300)
    summary = f"{kind_of_error}: {first_line}" if first_line else kind_of_error
    run_id = str(flow_run_id) if flow_run_id else "unknown"
    return Alert(
        kind="failure",
        severity="error",
        title=f"Flow {flow_name} failed",
        summary=summary,
        fields=[("Flow", flow_name), ("Flow run", run_id), ("Error", kind_of_error)],
        next_step="nothing downstream of this run happens until it is fixed and rerun; "
        "the traceback is in the flow run's logs",
        run_url=flow_run_url(settings, flow_run_id),
    )


_GATE_VERDICTS: dict[str, tuple[Severity, str, str]] = {
    # verdict: severity, title, default next step
    "promote": (
        "info",
        "candidate passed every gate",
        "registered; the promotion mode decides when it becomes champion",
    ),
    "keep_champion": (
        "warn",
        "candidate refused, champion kept",
        "the champion keeps scoring; the refused candidate stays an MLflow run with its reasons",
    ),
    "refuse": (
        "alert",
        "candidate refused, no champion yet",
        "nothing is registered and nothing can score until a candidate passes",
    ),
}


def gate_alert(
    model_name: str,
    version: str | int | None,
    verdict: str,
    failed_gates: Mapping[str, str] | Sequence[tuple[str, str]],
    metrics: Mapping[str, float | None],
    *,
    as_of: date | None = None,
    run_url: str | None = None,
    next_step: str | None = None,
) -> Alert:
    """A ``gate`` alert for a retraining outcome, from plain values.

    Args:
        model_name: registered model name.
        version: the registered version, or None when the candidate was not registered.
        verdict: ``promote``, ``keep_champion`` or ``refuse`` (``GateDecision.verdict``).
        failed_gates: gate name → one-sentence detail with the numbers, in report order.
        metrics: key holdout metrics (name → value; None or NaN shows as ``n/a``).
        as_of: the retraining date (shown as the alert's date).
        run_url: link to the retrain flow run (see :func:`flow_run_url`).
        next_step: overrides the verdict's default next step.

    Raises:
        ValueError: an unknown verdict.
    """
    if verdict not in _GATE_VERDICTS:
        raise ValueError(f"gate verdict {verdict!r} is not one of {tuple(_GATE_VERDICTS)}")
    severity, headline, default_next = _GATE_VERDICTS[verdict]
    failed = list(failed_gates.items() if isinstance(failed_gates, Mapping) else failed_gates)
    if verdict == "promote":
        shown = f"version {version}" if version is not None else "the candidate"
        summary = f"{model_name}: {shown} passed every gate."
    else:
        names = ", ".join(name for name, _ in failed) or "unknown"
        summary = f"{model_name}: {len(failed)} gate(s) failed ({names})."
    fields = [("Verdict", verdict)]
    fields += [(f"✗ {name}", detail) for name, detail in failed]
    fields += [(name, _format_metric(value)) for name, value in metrics.items()]
    return Alert(
        kind="gate",
        severity=severity,
        title=f"Retraining: {headline}",
        summary=summary,
        fields=fields,
        model_version=None if version is None else str(version),
        score_date=as_of,
        next_step=next_step or default_next,
        run_url=run_url,
    )


def _format_metric(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.4f}"


# --------------------------------------------------------------------------------------------
# Text that fits Slack's limits (rendering, reasons, failure messages)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + ELLIPSIS
