"""An :class:`~tasks.alerting.alerts.Alert` as Slack Block Kit plus its plain-text fallback.

Every text is cut to Slack's limits (header, section, field, context, block and field counts) and
a link button whose URL is over Slack's limit is left out, so a message is never refused for its
size; the plain text carries the same facts for notifications, screen readers and clients that
do not render blocks.
"""

from __future__ import annotations

from typing import Any

from tasks.alerting.alerts import ELLIPSIS, Alert, truncate

# Slack's documented limits (Block Kit reference), and what we keep below them.
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
FIELDS_PER_SECTION = 10
CONTEXT_TEXT_MAX = 3000
URL_MAX = 3000
MAX_BLOCKS = 50
MAX_FIELDS = 40
FIELD_LABEL_MAX = 150
TEXT_MAX = 4000

_EMOJI = {
    "info": ":information_source:",
    "warn": ":warning:",
    "alert": ":rotating_light:",
    "retrain": ":arrows_counterclockwise:",
    "error": ":x:",
}


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: only ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md(text: str, limit: int) -> str:
    """Escaped mrkdwn cut to ``limit``, never in the middle of an ``&amp;``-style entity."""
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut.rstrip() + ELLIPSIS


def _context_items(alert: Alert) -> list[str]:
    items = [f"{alert.severity.upper()} · {alert.kind}"]
    if alert.model_version is not None:
        items.append(f"model version {alert.model_version}")
    if alert.score_date is not None:
        items.append(f"score date {alert.score_date.isoformat()}")
    items.append(f"alert {alert.alert_id}")
    return items


def render_blocks(alert: Alert) -> list[dict[str, Any]]:
    """Block Kit: header, summary, fields (sections of ten), next step, context, run button.

    Every text is kept within Slack's limits; a cut ends in "…" and fields beyond
    :data:`MAX_FIELDS` are counted in a note.
    """
    header = truncate(f"{_EMOJI[alert.severity]} {alert.title}", HEADER_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _md(alert.summary, 3000)}},
    ]
    shown = alert.fields[:MAX_FIELDS]
    for start in range(0, len(shown), FIELDS_PER_SECTION):
        cells = []
        for label, value in shown[start : start + FIELDS_PER_SECTION]:
            head = _md(label, FIELD_LABEL_MAX)
            body = _md(value or "—", FIELD_TEXT_MAX - len(head) - 3)
            cells.append({"type": "mrkdwn", "text": f"*{head}*\n{body}"})
        blocks.append({"type": "section", "fields": cells})
    hidden = len(alert.fields) - len(shown)
    if hidden:
        note = f"…and {hidden} more field(s) not shown here"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    if alert.next_step:
        next_text = _md(alert.next_step, SECTION_TEXT_MAX - len("*Next:* "))
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Next:* {next_text}"}}
        )
    context = [
        {"type": "mrkdwn", "text": _md(item, CONTEXT_TEXT_MAX)} for item in _context_items(alert)
    ]
    blocks.append({"type": "context", "elements": context[:10]})
    if alert.run_url and len(alert.run_url) <= URL_MAX:
        button = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open flow run"},
            "url": alert.run_url,
            "action_id": "open_flow_run",
        }
        blocks.append({"type": "actions", "elements": [button]})
    return blocks[:MAX_BLOCKS]


def render_text(alert: Alert) -> str:
    """The plain-text fallback (notifications, clients without blocks): the same content."""
    lines = [
        f"{_EMOJI[alert.severity]} [{alert.severity.upper()}] {alert.kind}: {alert.title}",
        alert.summary,
    ]
    lines += [f"• {label}: {value or '—'}" for label, value in alert.fields[:MAX_FIELDS]]
    hidden = len(alert.fields) - MAX_FIELDS
    if hidden > 0:
        lines.append(f"…and {hidden} more field(s) not shown here")
    if alert.next_step:
        lines.append(f"Next: {alert.next_step}")
    lines.append(" · ".join(_context_items(alert)[1:]))
    if alert.run_url:
        lines.append(f"Flow run: {alert.run_url}")
    return _md("\n".join(lines), TEXT_MAX)
