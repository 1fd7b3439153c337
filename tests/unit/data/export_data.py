"""A small Telco-style export, generated in the test's tmp_path, and its subscribers mapping."""

from __future__ import annotations

from datetime import date
from pathlib import Path

SNAPSHOT = date(2026, 1, 31)
HEADER = (
    "customerID,gender,SeniorCitizen,tenure,Contract,MonthlyCharges,"
    "TotalCharges,InternetService,Partner,Churn,LeftOn"
)

BASE_MAPPING = """\
table: subscribers
snapshot_date: {snapshot}
tenure: {{column: tenure, unit: months}}
columns:
  customerID: subscriber_id
  Contract: contract_type
  MonthlyCharges: monthly_charge
  gender: gender
  SeniorCitizen: age_band
values:
  contract_type: {{"Month-to-month": month_to_month, "One year": one_year, "Two year": two_year}}
  gender: {{Female: female, Male: male}}
  age_band: {{"1": "65+", "0": unspecified}}
constants: {{region: unspecified, plan: basic, payment_method: card}}
"""

CHURN_FLAG = "churn: {flag: Churn}\n"

ATTRIBUTES = """\
attributes:
  internet_service:
    column: InternetService
    type: categorical
    allowed: [dsl, fiber_optic, none]
    values: {DSL: dsl, "Fiber optic": fiber_optic, "No": none}
  total_charges:
    column: TotalCharges
    type: numeric
    min: 0
    max: 100000
    nullable: true
"""


def export_row(
    customer: str = "1",
    *,
    tenure: str = "10",
    total: str = "350",
    internet: str = "DSL",
    partner: str = "Yes",
    churn: str = "No",
    left_on: str = "",
) -> str:
    """One line of the export; the defaults make a valid, staying subscriber."""
    return (
        f"{customer},Female,0,{tenure},Month-to-month,35.00,{total},{internet},{partner},"
        f"{churn},{left_on}"
    )


def write_export(path: Path, *rows: str) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def write_mapping(path: Path, *extra: str, snapshot: date = SNAPSHOT) -> Path:
    """The base subscribers mapping plus ``extra`` blocks (churn, attributes, ...)."""
    path.write_text(BASE_MAPPING.format(snapshot=snapshot.isoformat()) + "".join(extra))
    return path


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative name → bytes)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
