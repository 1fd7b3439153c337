"""Audit views over the prediction log and promotion history, and the read-only session."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.audit.views import (
    AUDIT_VIEWS,
    AuditError,
    ReadOnlyViolation,
    audit_connection,
    run_readonly,
    subscriber_report,
)
from tasks.core.settings import Settings
from tasks.data.customer_keys import CUSTOMER_KEYS, customer_keys_path
from tasks.training.promotions import Promotion, history_path
from tests.unit.audit.test_prediction_log import (
    FEATURES_TYPE,
    MODEL,
    features_of,
    make_batch,
    publish,
)

DAY = date(2026, 5, 1)


def promotion(
    at: str, to_version: int | None, *, alias: str = "champion", model: str = MODEL
) -> Promotion:
    return Promotion(
        at=datetime.fromisoformat(at),
        model=model,
        alias=alias,
        from_version=None,
        to_version=to_version,
        by="tester",
        reason="synthetic",
        run_id=None,
        action="promote",
    )


def write_history(settings: Settings, moves: list[Promotion]) -> None:
    """The promotion history as tasks.training.promotions.append_history writes it: one JSON line a move."""
    path = history_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(move.to_json() + "\n" for move in moves), encoding="utf-8")


def query(settings: Settings, sql: str) -> list[dict]:
    conn = audit_connection(settings)
    try:
        return run_readonly(conn, sql).to_pylist()
    finally:
        conn.close()


def write_customer_keys(settings: Settings, keys: dict[str, int]) -> None:
    """The keys table as an import with ``customer_key:`` writes it (tasks.data.customer_keys)."""
    path = customer_keys_path(settings.source_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"customer_key": list(keys), "subscriber_id": list(keys.values())})
    pq.write_table(table.cast(CUSTOMER_KEYS.arrow_schema), path)


@pytest.fixture
def log(churn_home: Settings) -> Settings:
    """Two days; champion v3 and shadow v4 on the first, champion v3 only on the second.
    Subscribers 1 and 2 were imported with their own ids; 3 has none."""
    publish(churn_home, [make_batch([1, 2, 3], [0.5, 0.05, 0.01])])
    publish(churn_home, [make_batch([1, 2, 3], [0.4, 0.2, 0.01])], version=4, role="shadow")
    publish(churn_home, [make_batch([1, 2], [0.3, 0.02])], day=DAY + timedelta(days=1))
    write_history(churn_home, [promotion("2026-04-01T09:00:00+00:00", 3)])
    write_customer_keys(churn_home, {"7590-VHVEG": 1, "5575-GNVDE": 2})
    return churn_home


# --- views -----------------------------------------------------------------------------------


@pytest.mark.parametrize("view", AUDIT_VIEWS)
def test_every_view_answers_a_select(log: Settings, view: str) -> None:
    rows = query(log, f"SELECT * FROM {view}")
    assert rows, view


@pytest.mark.parametrize("view", AUDIT_VIEWS)
def test_views_exist_and_are_empty_before_anything_is_logged(
    churn_home: Settings, view: str
) -> None:
    assert query(churn_home, f"SELECT * FROM {view}") == []
    assert not churn_home.predictions_dir.exists()  # auditing creates nothing


@pytest.mark.parametrize("view", ["predictions", "promotions"])
def test_empty_views_have_the_same_columns_as_full_ones(churn_home: Settings, view: str) -> None:
    empty = query(churn_home, f"DESCRIBE {view}")
    publish(churn_home, [make_batch([1])])
    write_history(churn_home, [promotion("2026-04-01T09:00:00+00:00", 3)])
    full = query(churn_home, f"DESCRIBE {view}")

    def shape(c: dict) -> tuple[str, str]:
        # features is a struct either way; its fields are those of the services logged so far.
        kind = c["column_type"]
        return c["column_name"], "STRUCT" if kind.startswith("STRUCT") else kind

    assert [shape(c) for c in empty] == [shape(c) for c in full]
    if view == "predictions":
        types = {c["column_name"]: c["column_type"] for c in full}
        assert types["features"] == (
            "STRUCT(tenure_months INTEGER, monthly_charge FLOAT, plan VARCHAR, autopay BOOLEAN)"
        )


def test_predictions_join_the_customers_own_ids(log: Settings) -> None:
    rows = query(
        log,
        "SELECT k.customer_key, p.probability FROM predictions p "
        "JOIN customer_keys k USING (subscriber_id) "
        f"WHERE p.role = 'champion' AND p.score_date = DATE '{DAY}' ORDER BY 1",
    )
    assert rows == [
        {"customer_key": "5575-GNVDE", "probability": pytest.approx(0.05)},
        {"customer_key": "7590-VHVEG", "probability": pytest.approx(0.5)},
    ]


def test_without_customer_keys_the_view_is_empty_with_the_same_columns(
    churn_home: Settings,
) -> None:
    empty = query(churn_home, "DESCRIBE customer_keys")
    write_customer_keys(churn_home, {"7590-VHVEG": 1})
    full = query(churn_home, "DESCRIBE customer_keys")
    assert [(c["column_name"], c["column_type"]) for c in empty] == [
        (c["column_name"], c["column_type"]) for c in full
    ]
    assert query(churn_home, "SELECT * FROM customer_keys") == [
        {"customer_key": "7590-VHVEG", "subscriber_id": 1}
    ]


def test_an_empty_history_file_gives_an_empty_promotions_view(log: Settings) -> None:
    history_path(log).write_text("")
    assert query(log, "SELECT * FROM promotions") == []
    assert {r["champion_version"] for r in query(log, "SELECT * FROM champion_on_date")} == {None}


def test_predictions_view_reads_every_file(log: Settings) -> None:
    rows = query(
        log,
        "SELECT score_date, model_version, role, count(*) AS n FROM predictions "
        "GROUP BY ALL ORDER BY ALL",
    )
    assert [(r["score_date"], r["model_version"], r["role"], r["n"]) for r in rows] == [
        (DAY, 3, "champion", 3),
        (DAY, 4, "shadow", 3),
        (DAY + timedelta(days=1), 3, "champion", 2),
    ]


# A second feature service: one field retyped (int32 -> int64), two gone, one new.
OTHER_FEATURES = pa.struct(
    [("tenure_months", pa.int64()), ("plan", pa.string()), ("support_calls_30d", pa.int64())]
)


def test_files_of_two_feature_services_read_together(churn_home: Settings) -> None:
    publish(churn_home, [make_batch([1, 2])])
    other = make_batch([1, 2]).set_column(4, "features", features_of([1, 2], OTHER_FEATURES))
    publish(churn_home, [other], version=4, role="shadow", feature_service="churn_model_v2")

    rows = query(
        churn_home,
        "SELECT feature_service, subscriber_id, features, features.support_calls_30d AS calls, "
        "to_json(features) AS shown FROM predictions ORDER BY feature_service, subscriber_id",
    )
    (described,) = query(
        churn_home, "SELECT column_type FROM (DESCRIBE predictions) WHERE column_name = 'features'"
    )
    # One struct with every field of both services, by name, in first-seen order.
    assert described["column_type"] == (
        "STRUCT(tenure_months BIGINT, monthly_charge FLOAT, plan VARCHAR, autopay BOOLEAN, "
        "support_calls_30d BIGINT)"
    )
    assert [(r["feature_service"], r["subscriber_id"]) for r in rows] == [
        ("churn_model_v1", 1),
        ("churn_model_v1", 2),
        ("churn_model_v2", 1),
        ("churn_model_v2", 2),
    ]
    assert rows[0]["features"] == {
        "tenure_months": 1,
        "monthly_charge": 21.5,
        "plan": "plus",
        "autopay": False,
        "support_calls_30d": None,  # not a field of churn_model_v1
    }
    assert rows[2]["features"] == {
        "tenure_months": 1,
        "monthly_charge": None,
        "plan": "plus",
        "autopay": None,
        "support_calls_30d": 1,
    }
    assert [r["calls"] for r in rows] == [None, None, 1, 2]
    assert rows[3]["shown"] == (
        '{"tenure_months":2,"monthly_charge":null,"plan":"basic","autopay":null,'
        '"support_calls_30d":2}'
    )


def test_empty_files_publish_and_read_with_the_others(churn_home: Settings) -> None:
    # Nobody to score: a file without a known struct (null type), one with the service's.
    publish(churn_home, [], day=DAY + timedelta(days=1))
    publish(churn_home, [], day=DAY + timedelta(days=2), features_type=FEATURES_TYPE)
    alone = query(churn_home, "SELECT count(*) AS n, count(features) AS f FROM predictions")
    assert alone == [{"n": 0, "f": 0}]
    assert subscriber_report(churn_home, 1).num_rows == 0

    publish(churn_home, [make_batch([1, 2])])
    rows = query(
        churn_home,
        "SELECT score_date, features.plan AS plan FROM predictions ORDER BY subscriber_id",
    )
    assert rows == [{"score_date": DAY, "plan": "plus"}, {"score_date": DAY, "plan": "basic"}]
    volumes = query(churn_home, "SELECT DISTINCT score_date FROM daily_volumes")
    assert volumes == [{"score_date": DAY}]  # the empty days hold no prediction


def test_subscriber_report_is_the_history_of_one_subscriber(log: Settings) -> None:
    rows = subscriber_report(log, 2).to_pylist()
    assert [(r["score_date"], r["role"], r["model_version"], r["probability"]) for r in rows] == [
        (DAY, "champion", 3, 0.05),
        (DAY, "shadow", 4, 0.2),
        (DAY + timedelta(days=1), "champion", 3, 0.02),
    ]
    assert rows[0]["risk_tier"] == "medium" and rows[0]["reasons"] == [
        "tenure_months",
        "support_calls_30d",
    ]
    assert rows[0]["features"] == {
        "tenure_months": 2,
        "monthly_charge": 22.5,
        "plan": "basic",
        "autopay": False,
    }
    assert subscriber_report(log, 999).num_rows == 0


def test_daily_volumes_count_per_tier(log: Settings) -> None:
    rows = query(
        log,
        "SELECT risk_tier, predictions, share FROM daily_volumes "
        "WHERE score_date = DATE '2026-05-01' AND role = 'champion' ORDER BY risk_tier",
    )
    assert rows == [
        {"risk_tier": "high", "predictions": 1, "share": pytest.approx(1 / 3)},
        {"risk_tier": "low", "predictions": 1, "share": pytest.approx(1 / 3)},
        {"risk_tier": "medium", "predictions": 1, "share": pytest.approx(1 / 3)},
    ]


def test_shadow_disagreement_on_a_hand_made_example(churn_home: Settings) -> None:
    # subscriber: champion (p, tier) | shadow (p, tier)
    #   1: 0.50 high   | 0.40 high     agree, both high, |diff| 0.10
    #   2: 0.20 high   | 0.08 medium    disagree,          |diff| 0.12
    #   3: 0.05 medium | 0.06 medium    agree,             |diff| 0.01
    #   4: 0.01 low    | 0.05 medium    disagree,          |diff| 0.04
    #   5: 0.30 high   | —              champion only: not compared
    #   6: —           | 0.90 high      shadow only: not compared
    publish(
        churn_home,
        [
            make_batch(
                [1, 2, 3, 4, 5],
                [0.5, 0.2, 0.05, 0.01, 0.3],
                ["high", "high", "medium", "low", "high"],
            )
        ],
    )
    publish(
        churn_home,
        [
            make_batch(
                [1, 2, 3, 4, 6],
                [0.4, 0.08, 0.06, 0.05, 0.9],
                ["high", "medium", "medium", "medium", "high"],
            )
        ],
        version=4,
        role="shadow",
    )
    (row,) = query(churn_home, "SELECT * FROM shadow_disagreement")
    assert row == {
        "score_date": DAY,
        "model_name": MODEL,
        "champion_version": 3,
        "shadow_version": 4,
        "subscribers": 4,
        "tier_disagreements": 2,
        "mean_abs_probability_diff": pytest.approx((0.10 + 0.12 + 0.01 + 0.04) / 4),
        "champion_high": 2,
        "both_high": 1,
        "high_overlap": pytest.approx(0.5),
    }


def test_champion_on_date_follows_the_promotion_history(churn_home: Settings) -> None:
    days = [date(2026, 4, 30) + timedelta(days=i) for i in range(7)]  # 04-30 .. 05-06
    for day in days:
        publish(
            churn_home, [make_batch([1, 2])], day=day, version=1 if day < date(2026, 5, 3) else 2
        )
    write_history(
        churn_home,
        [
            promotion("2026-05-01T12:00:00+00:00", 1),  # first champion, mid-day 05-01
            promotion("2026-05-02T08:00:00+00:00", 2, alias="challenger"),  # not a champion move
            promotion("2026-05-03T23:59:59.999999+00:00", 2),  # last instant of 05-03
            promotion("2026-05-05T00:00:00+00:00", 5),  # first instant of 05-05
            promotion("2026-05-05T10:00:00+00:00", 1),  # rolled back the same day
            promotion("2026-05-06T01:00:00+00:00", None),  # alias taken off
            promotion("2026-04-01T00:00:00+00:00", 9, model="another_model"),  # another model
        ],
    )
    rows = query(churn_home, "SELECT * FROM champion_on_date ORDER BY score_date")
    assert [(r["score_date"], r["champion_version"]) for r in rows] == [
        (date(2026, 4, 30), None),  # nothing promoted yet
        (date(2026, 5, 1), 1),
        (date(2026, 5, 2), 1),
        (date(2026, 5, 3), 2),
        (date(2026, 5, 4), 2),
        (date(2026, 5, 5), 1),  # the latest move of that day wins
        (date(2026, 5, 6), None),
    ]
    # The log scored 05-01..05-02 with v1 and 05-03.. with v2: it disagrees on 04-30, 05-05, 05-06.
    assert [r["log_agrees"] for r in rows] == [False, True, True, True, True, False, False]
    assert rows[1]["logged_champion_versions"] == [1]
    assert rows[5]["champion_since"] == datetime(2026, 5, 5, 10, tzinfo=UTC)


def test_champion_on_date_ends_the_day_in_the_business_time_zone(churn_home: Settings) -> None:
    publish(churn_home, [make_batch([1])])
    # 02:00 UTC on 05-02 is still 05-01 (22:00) in New York.
    write_history(churn_home, [promotion("2026-05-02T02:00:00+00:00", 3)])
    (utc,) = query(churn_home, "SELECT champion_version FROM champion_on_date")
    assert utc["champion_version"] is None
    new_york = churn_home.model_copy(update={"timezone": "America/New_York"})
    (local,) = query(new_york, "SELECT champion_version FROM champion_on_date")
    assert local["champion_version"] == 3


# --- read-only session ----------------------------------------------------------------------

REFUSED = [
    ("INSERT", "INSERT INTO predictions SELECT * FROM predictions"),
    ("COPY", "COPY predictions TO '{dir}/copy.parquet'"),
    ("COPY", "COPY (SELECT 1) TO '/tmp/out.csv'"),
    ("ATTACH", "ATTACH '{dir}/x.duckdb' AS x"),
    ("CREATE", "CREATE TABLE t AS SELECT * FROM predictions"),
    ("CREATE", "CREATE OR REPLACE VIEW predictions AS SELECT 1 AS x"),
    ("SET", "SET enable_external_access = true"),
    ("SET", "SET VARIABLE prediction_files = '/etc/*'"),
    ("SET", "RESET lock_configuration"),
    ("UPDATE", "UPDATE predictions SET probability = 0"),
    ("DELETE", "DELETE FROM predictions"),
    ("DROP", "DROP VIEW predictions"),
    ("ALTER", "ALTER VIEW predictions RENAME TO p"),
    ("LOAD", "INSTALL httpfs"),
    ("LOAD", "LOAD httpfs"),
    ("EXPORT", "EXPORT DATABASE '{dir}/export'"),
    ("CALL", "CALL pragma_version()"),
    ("SET", "PRAGMA memory_limit = '1GB'"),  # an assignment PRAGMA parses as SET
    ("PRAGMA", "PRAGMA import_database('{dir}')"),
    ("EXPLAIN", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{dir}/x.csv'"),
    ("TRANSACTION", "BEGIN TRANSACTION"),
    ("CREATE", "SELECT 1; CREATE TABLE sneaky AS SELECT 1"),  # a read first changes nothing
]


@pytest.mark.parametrize(("kind", "sql"), REFUSED, ids=[s for _, s in REFUSED])
def test_writes_and_settings_are_refused(log: Settings, kind: str, sql: str) -> None:
    conn = audit_connection(log)
    before = sorted(p.name for p in log.predictions_dir.rglob("*"))
    with pytest.raises(ReadOnlyViolation, match=f"refused {kind}"):
        run_readonly(conn, sql.format(dir=log.predictions_dir))
    assert sorted(p.name for p in log.predictions_dir.rglob("*")) == before
    assert conn.sql("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
    assert run_readonly(conn, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 8}]


ALLOWED = [
    "SELECT count(*) FROM predictions",
    "WITH x AS (SELECT * FROM promotions) SELECT * FROM x",
    "FROM daily_volumes",
    "DESCRIBE predictions",
    "SHOW TABLES",
    "SUMMARIZE predictions",
    "EXPLAIN SELECT * FROM shadow_disagreement",
    "EXPLAIN ANALYZE SELECT * FROM champion_on_date",
    "PRAGMA table_info('predictions')",
    "SELECT * FROM query('SELECT 1 AS one')",
    "SELECT 1; SELECT 2 AS two",
    "SELECT features.plan, to_json(features) FROM predictions",
    "SELECT unnest(features) FROM predictions",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_reads_are_allowed(log: Settings, sql: str) -> None:
    assert query(log, sql)


def test_the_last_statements_result_is_returned(log: Settings) -> None:
    assert query(log, "SELECT 1 AS one; SELECT 2 AS two") == [{"two": 2}]


def test_files_outside_the_log_cannot_be_read(log: Settings) -> None:
    with pytest.raises(AuditError, match="Permission Error"):
        query(log, "SELECT * FROM read_text('/etc/hostname')")
    # The log's own files and the promotion history can be.
    assert query(
        log, f"SELECT count(*) AS n FROM read_parquet('{log.predictions_dir}/*/*.parquet')"
    )
    assert query(log, f"SELECT * FROM read_json('{history_path(log)}')")


def test_the_configuration_is_locked(log: Settings) -> None:
    conn = audit_connection(log)
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        conn.execute("SET enable_external_access = true")
    settings = dict(
        conn.sql(
            "SELECT name, value FROM duckdb_settings() "
            "WHERE name IN ('enable_external_access', 'lock_configuration', 'autoload_known_extensions')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "autoload_known_extensions": "false",
    }


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", "not valid SQL"),
        ("", "no SQL statement"),
        ("SELECT nope FROM predictions", "audit query failed"),
    ],
)
def test_bad_sql_is_a_clear_error(log: Settings, sql: str, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        query(log, sql)


def test_an_unreadable_log_file_is_a_clear_error(log: Settings) -> None:
    bad = log.predictions_dir / "score_date=2026-05-09" / f"{MODEL}-v3-champion.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet")
    with pytest.raises(AuditError, match="audit"):
        query(log, "SELECT count(*) FROM predictions")


def test_written_files_keep_their_schema_through_duckdb(log: Settings) -> None:
    (row,) = query(log, "SELECT * FROM predictions WHERE subscriber_id = 1 AND role = 'shadow'")
    assert row["prediction_id"] == f"2026-05-01/{MODEL}/v4/shadow/1"
    assert row["scored_at"].tzinfo is not None
    assert pq.read_schema(next(log.predictions_dir.rglob("*.parquet"))).names == list(row)
