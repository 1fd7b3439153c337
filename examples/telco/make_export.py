"""A generated telco-style churn export: one row per customer, the columns of the well-known public
telco churn CSV, with their usual values, so the import mapping can be tried without the real file.

Churn follows a logistic model of effects the public data is known for (month-to-month contracts,
fiber optic, electronic checks, short tenure, no tech support or online security, seniors and
paperless billing raise it; long contracts, a partner and dependents lower it), so a gradient
boosted model has something real to learn. Deterministic for a given seed. Customer ids are
text like the public file's (``7590-VHVEG``), imported with ``customer_key: customerID``;
``--numeric-ids`` writes plain numbers instead.

    python examples/telco/make_export.py --customers 7000 --out /tmp/export.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

FIRST_ID = 100_001
"""The first of the plain-number ids ``--numeric-ids`` writes."""
ID_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))

YES_NO = np.array(["No", "Yes"])
CONTRACTS = np.array(["Month-to-month", "One year", "Two year"])
INTERNET = np.array(["DSL", "Fiber optic", "No"])
PAYMENTS = np.array(
    ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"]
)
ADD_ONS = (
    # name, share taken by internet customers, monthly price
    ("OnlineSecurity", 0.37, 5.0),
    ("OnlineBackup", 0.44, 5.0),
    ("DeviceProtection", 0.44, 5.0),
    ("TechSupport", 0.37, 5.0),
    ("StreamingTV", 0.49, 10.0),
    ("StreamingMovies", 0.50, 10.0),
)
INTERCEPT = -2.15
"""Sets the churn rate near a quarter given the effects in :func:`_churn_logit`."""


def _text_ids(n: int, seed: int) -> np.ndarray:
    """``n`` distinct ids like the public export's: four digits, a dash, five capital letters.

    Drawn from their own generator, so the customers themselves do not depend on the id style.
    """
    rng = np.random.default_rng([seed, 1])
    space = 10_000 * len(ID_LETTERS) ** 5
    codes = rng.choice(space, size=n, replace=False)
    digits, letters = np.divmod(codes, len(ID_LETTERS) ** 5)
    places = [(letters // len(ID_LETTERS) ** p) % len(ID_LETTERS) for p in range(4, -1, -1)]
    tails = ["".join(chars) for chars in zip(*(ID_LETTERS[p] for p in places), strict=True)]
    return np.array([f"{d:04d}-{t}" for d, t in zip(digits, tails, strict=True)])


def _yes_no(flags: np.ndarray) -> np.ndarray:
    return YES_NO[flags.astype(np.int64)]


def _tenure(rng: np.random.Generator, contract: np.ndarray) -> np.ndarray:
    """Whole months 0-72: month-to-month customers are mostly new, two-year ones mostly old."""
    mean = np.array([16.0, 40.0, 56.0])[contract]
    months = np.where(
        contract == 0,
        rng.exponential(mean),
        rng.normal(mean, 16.0),
    )
    months = np.clip(np.rint(months), 1, 72).astype(np.int64)
    # A handful signed up this month and have no bill yet (tenure 0, blank TotalCharges).
    months[rng.random(len(months)) < 0.002] = 0
    return months


def _churn_logit(
    contract: np.ndarray,
    tenure: np.ndarray,
    internet: np.ndarray,
    payment: np.ndarray,
    add_ons: dict[str, np.ndarray],
    senior: np.ndarray,
    paperless: np.ndarray,
    partner: np.ndarray,
    dependents: np.ndarray,
) -> np.ndarray:
    has_internet = internet != 2
    return (
        INTERCEPT
        + np.array([0.7, -0.2, -1.0])[contract]
        - 0.02 * tenure
        + 0.6 * (tenure < 6)
        + np.array([0.0, 0.7, -0.6])[internet]
        + 0.5 * (payment == 0)
        + 0.45 * (has_internet & ~add_ons["TechSupport"])
        + 0.45 * (has_internet & ~add_ons["OnlineSecurity"])
        + 0.15 * (add_ons["StreamingTV"] | add_ons["StreamingMovies"])
        + 0.35 * senior
        + 0.3 * paperless
        - 0.15 * partner
        - 0.3 * dependents
    )


def make_export(customers: int, seed: int, numeric_ids: bool = False) -> pa.Table:
    """``customers`` rows of the export, the same for the same seed; only the ids differ with
    ``numeric_ids``."""
    rng = np.random.default_rng(seed)
    n = customers
    senior = rng.random(n) < 0.16
    partner = rng.random(n) < 0.48
    dependents = rng.random(n) < np.where(partner, 0.5, 0.1)
    contract = rng.choice(3, size=n, p=[0.55, 0.21, 0.24])
    tenure = _tenure(rng, contract)
    phone = rng.random(n) < 0.9
    multiple = phone & (rng.random(n) < 0.42)
    # Customers without a phone line have internet (the export has no one with neither).
    internet = np.where(phone, rng.choice(3, size=n, p=[0.30, 0.48, 0.22]), 0)
    has_internet = internet != 2
    add_ons = {name: has_internet & (rng.random(n) < share) for name, share, _ in ADD_ONS}
    paperless = rng.random(n) < np.where(contract == 0, 0.67, 0.5)
    # Month-to-month customers pay by electronic check more often than the others.
    payment = np.where(
        contract == 0,
        rng.choice(4, size=n, p=[0.49, 0.19, 0.16, 0.16]),
        rng.choice(4, size=n, p=[0.16, 0.27, 0.29, 0.28]),
    )

    # The monthly bill is the price of what the customer takes, plus a little for discounts.
    monthly = (
        20.0 * phone
        + 5.0 * multiple
        + np.array([25.0, 50.0, 0.0])[internet]
        + sum(price * add_ons[name] for name, _, price in ADD_ONS)
        + rng.normal(0.0, 1.5, size=n)
    )
    monthly = np.round(np.clip(monthly, 18.0, 120.0), 2)
    # Prices changed over the years, so the total only roughly equals tenure × monthly charge.
    total = np.round(tenure * monthly * rng.normal(1.0, 0.04, size=n).clip(0.85, 1.15), 2)

    logit = _churn_logit(
        contract, tenure, internet, payment, add_ons, senior, paperless, partner, dependents
    )
    churn = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    def service(taken: np.ndarray, applies: np.ndarray, otherwise: str) -> np.ndarray:
        return np.where(applies, _yes_no(taken), otherwise)

    columns = {
        "customerID": (
            pa.array(np.arange(FIRST_ID, FIRST_ID + n), pa.int64())
            if numeric_ids
            else pa.array(_text_ids(n, seed), pa.string())
        ),
        "gender": rng.choice(["Female", "Male"], size=n),
        "SeniorCitizen": senior.astype(np.int64),
        "Partner": _yes_no(partner),
        "Dependents": _yes_no(dependents),
        "tenure": tenure,
        "PhoneService": _yes_no(phone),
        "MultipleLines": service(multiple, phone, "No phone service"),
        "InternetService": INTERNET[internet],
        **{
            name: service(add_ons[name], has_internet, "No internet service")
            for name, _, _ in ADD_ONS
        },
        "Contract": CONTRACTS[contract],
        "PaperlessBilling": _yes_no(paperless),
        "PaymentMethod": PAYMENTS[payment],
        "MonthlyCharges": monthly,
        "TotalCharges": pa.array(total, pa.float64(), mask=tenure == 0),
        "Churn": _yes_no(churn),
    }
    return pa.table(columns)


def write_csv(table: pa.Table, path: Path) -> None:
    """Plain CSV as the public export is written: unquoted values, a blank for a missing total."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [table.column(name).to_pylist() for name in table.column_names]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(table.column_names)
        writer.writerows(["" if v is None else v for v in row] for row in zip(*columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=7_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("examples/telco/export.csv"))
    parser.add_argument(
        "--numeric-ids",
        action="store_true",
        help="customer ids 100001, 100002, … instead of text like 7590-VHVEG",
    )
    args = parser.parse_args(argv)
    table = make_export(args.customers, args.seed, args.numeric_ids)
    write_csv(table, args.out)
    churned = table.column("Churn").to_pylist().count("Yes") / max(1, table.num_rows)
    print(f"wrote {table.num_rows:,} customers to {args.out} (churn {churned:.1%})")


if __name__ == "__main__":
    main()
