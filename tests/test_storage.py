"""Storage on SQLite and PostgreSQL: round trips, upsert-add, baselines, transactions, export,
schema versions, controllers sharing one database."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from controller.base.errors import InputError
from controller.engine.activity import ActivityRecord, ActivityTable
from controller.engine.services import Service
from controller.store.schema import LATEST
from controller.store.storage import (
    Baseline,
    DecisionRecord,
    DeviceRow,
    FingerprintRecord,
    Storage,
    Store,
    open_store,
)
from tests.support.postgres import PostgresServer

pytest_plugins = ["tests.support.storage"]

MAC1 = "02:00:00:00:00:01"
MAC2 = "02:00:00:00:00:02"


def baseline(cells: int, **values: tuple[int, int]) -> Baseline:
    result = Baseline.zeros(cells)
    for key, (packets, counted) in values.items():
        index = int(key[1:])
        result.packets[index] = packets
        result.bytes[index] = counted
    return result


def test_wal_mode_and_schema(sqlite_store: Storage) -> None:
    db = sqlite3.connect(sqlite_store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"devices", "services", "activity", "baselines", "fingerprints", "decisions"} <= tables
    db.close()


def test_poll_adds_activity_and_moves_baseline_together(store: Store) -> None:
    store.put_devices([DeviceRow("02:00:00:00:00:01", 1, "plug", None, None, "static", 5.0, 5.0)])
    first = [ActivityRecord("02:00:00:00:00:01", 10, "tcp/443", 3, 300)]
    store.record_poll("s1", baseline(8, c3=(3, 300)), first, when=100.0)
    second = [
        ActivityRecord("02:00:00:00:00:01", 10, "tcp/443", 2, 120),
        ActivityRecord("02:00:00:00:00:01", 11, "udp/53", 1, 80),
    ]
    store.record_poll("s1", baseline(8, c3=(5, 420), c7=(1, 80)), second, when=200.0)
    assert store.activity() == [
        ActivityRecord("02:00:00:00:00:01", 10, "tcp/443", 5, 420),
        ActivityRecord("02:00:00:00:00:01", 11, "udp/53", 1, 80),
    ]
    assert store.activity(11, 11) == [ActivityRecord("02:00:00:00:00:01", 11, "udp/53", 1, 80)]
    stored = store.baseline("s1", 8)
    assert stored is not None
    assert stored.packets.tolist() == [0, 0, 0, 5, 0, 0, 0, 1]
    assert stored.bytes.tolist() == [0, 0, 0, 420, 0, 0, 0, 80]
    assert store.baseline("s1", 16) is None, "a different counter size has no baseline"
    assert store.baseline("s2", 8) is None
    assert store.devices()[0].last_seen == 200.0


def test_failed_poll_leaves_nothing_half_written(store: Store) -> None:
    store.record_poll("s1", baseline(4, c1=(1, 10)), [ActivityRecord("m", 1, "x", 1, 10)], 1.0)
    bad = [ActivityRecord("m", 1, "x", 1, 10), ActivityRecord("m", 1, None, 1, 1)]  # type: ignore[arg-type]
    with pytest.raises(store.integrity_error):
        store.record_poll("s1", baseline(4, c1=(3, 30)), bad, 2.0)
    assert store.activity() == [ActivityRecord("m", 1, "x", 1, 10)]
    kept = store.baseline("s1", 4)
    assert kept is not None and kept.packets.tolist() == [0, 1, 0, 0]


def test_meta_refuses_a_different_time_unit(store: Store) -> None:
    store.check_time_unit(3600)
    store.check_time_unit(3600.0)
    assert store.meta("time_unit_seconds") == "3600.0"
    with pytest.raises(InputError, match=r"written with time_unit_seconds=3600.0, not 1.0"):
        store.check_time_unit(1)
    assert store.meta("time_unit_seconds") == "3600.0"


def test_devices_services_fingerprints_decisions_round_trip(db_location: str | Path) -> None:
    with open_store(db_location) as store:
        store.put_devices(
            [
                DeviceRow("02:00:00:00:00:02", 2, "camera", "s1", 3, "digest", 1.0, 2.0),
                DeviceRow("02:00:00:00:00:01", None, "unknown", None, None, "digest", 1.0, 1.5),
            ]
        )
        store.put_services(
            [
                Service(1, "tcp/443", 6, 443, 443, 100),
                Service(2, "udp/eph", 17, 49152, 65535, 5, False),
            ]
        )
        store.add_results(
            [FingerprintRecord("02:00:00:00:00:02", 3, 9, "G4", {"tcp/443": 0.75}, True)],
            [
                DecisionRecord(
                    "02:00:00:00:00:02", 3, 9, "G4", "camera", 0.9, {"matched": ["tcp/443"]}, 51.0
                )
            ],
            when=50.0,
        )
    with open_store(db_location) as again:
        assert again.devices() == [
            DeviceRow("02:00:00:00:00:01", None, "unknown", None, None, "digest", 1.0, 1.5),
            DeviceRow("02:00:00:00:00:02", 2, "camera", "s1", 3, "digest", 1.0, 2.0),
        ]
        assert again.services() == [
            Service(1, "tcp/443", 6, 443, 443, 100),
            Service(2, "udp/eph", 17, 49152, 65535, 5, in_dst_table=False),
        ]
        assert again.fingerprints() == [
            FingerprintRecord("02:00:00:00:00:02", 3, 9, "G4", {"tcp/443": 0.75}, True)
        ]
        assert again.decisions() == [
            DecisionRecord(
                "02:00:00:00:00:02", 3, 9, "G4", "camera", 0.9, {"matched": ["tcp/443"]}, 51.0
            )
        ]


def test_export_csv_and_parquet(store: Store, tmp_path: Path) -> None:
    rows = [ActivityRecord("a", 1, "tcp/80", 2, 200), ActivityRecord("b", 1, "udp/53", 1, 70)]
    store.record_poll("s1", Baseline.zeros(2), rows, 1.0)
    out = tmp_path / "activity.csv"
    assert store.export("activity", out) == 2
    exported = [
        ["device", "unit", "service", "packets", "bytes"],
        ["a", "1", "tcp/80", "2", "200"],
        ["b", "1", "udp/53", "1", "70"],
    ]
    with out.open() as handle:
        assert list(csv.reader(handle)) == exported
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "activity.parquet"
    assert store.export("activity", parquet) == 2
    assert pq.read_table(parquet).column("packets").to_pylist() == [2, 1]
    with pytest.raises(InputError, match="cannot export 'nope'"):
        store.export("nope", out)
    with out.open() as handle:
        assert list(csv.reader(handle)) == exported, "a refused export leaves the file alone"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unopenable_database_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match=str(bad)):
        Storage(bad)
    assert bad.read_bytes() == b"this is not sqlite" * 100


def test_a_damaged_page_is_named_when_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    with Storage(path) as storage:
        storage.put_devices(
            [DeviceRow(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", i, "camera", "s1", 1,
                       "digest", 1.0, 2.0) for i in range(2000)]
        )  # fmt: skip
    with sqlite3.connect(path) as db:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'devices'").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * size : root * size] = b"\xa5" * size
    path.write_bytes(bytes(data))
    damaged = rf"database {re.escape(str(path))} is damaged: database disk image is malformed"
    with pytest.raises(InputError, match=damaged), Storage(path) as storage:
        storage.devices()


def test_another_applications_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("CREATE TABLE devices (x INTEGER)")
    db.close()
    before = other.read_bytes()
    for readonly in (False, True):
        with pytest.raises(
            InputError,
            match=r"other.db is not an svcfp database \(it holds the tables devices, users\)",
        ):
            Storage(other, readonly=readonly)
        assert other.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.db holds no svcfp tables: it is empty"):
        Storage(empty, readonly=True)
    assert empty.read_bytes() == b""


def test_baseline_roundtrip_is_sparse_but_exact(store: Store) -> None:
    rng = np.random.default_rng(7)
    values = Baseline(
        (rng.random(262_144) < 0.01) * rng.integers(1, 2**40, 262_144),
        np.zeros(262_144, np.int64),
    )
    values.bytes[:] = values.packets * 64
    store.record_poll("s9", values, [], 1.0)
    back = store.baseline("s9", 262_144)
    assert back is not None
    assert np.array_equal(back.packets, values.packets)
    assert np.array_equal(back.bytes, values.bytes)


def test_add_activity_sums_and_reads_back_as_a_table(store: Store) -> None:
    first = ActivityTable.from_records(
        [("02:00:00:00:00:01", 10, "tcp/443", 3, 300), ("02:00:00:00:00:02", 11, "udp/53", 1, 70)],
        unit_seconds=60.0,
    )
    again = ActivityTable.from_records(
        [("02:00:00:00:00:01", 10, "tcp/443", 2, 100), ("02:00:00:00:00:01", 12, "icmp", 4, 256)],
        unit_seconds=60.0,
    )
    store.add_activity(first)
    store.add_activity(again)
    assert store.meta("time_unit_seconds") == "60.0"
    table = store.activity_table()
    assert table.unit_seconds == 60.0
    assert sorted(table.records()) == [
        ActivityRecord("02:00:00:00:00:01", 10, "tcp/443", 5, 400),
        ActivityRecord("02:00:00:00:00:01", 12, "icmp", 4, 256),
        ActivityRecord("02:00:00:00:00:02", 11, "udp/53", 1, 70),
    ]
    assert list(store.activity_table(11, 12).records()) == [
        ActivityRecord("02:00:00:00:00:01", 12, "icmp", 4, 256),
        ActivityRecord("02:00:00:00:00:02", 11, "udp/53", 1, 70),
    ]
    assert store.activity_table(11, 11, unit_seconds=1.0).unit_seconds == 1.0


def test_add_activity_of_another_unit_is_refused_whole(store: Store) -> None:
    store.add_activity(ActivityTable.from_records([("a", 1, "tcp/80", 1, 60)], unit_seconds=60.0))
    other = ActivityTable.from_records([("a", 1, "tcp/80", 9, 900)], unit_seconds=1.0)
    with pytest.raises(InputError, match=r"written with time_unit_seconds=60.0, not 1.0"):
        store.add_activity(other)
    assert store.activity() == [ActivityRecord("a", 1, "tcp/80", 1, 60)]


def test_activity_table_of_an_empty_database_names_it(store: Store) -> None:
    with pytest.raises(InputError, match=rf"database {re.escape(store.name)} has no time unit"):
        store.activity_table()


def test_results_and_settings_commit_together(store: Store) -> None:
    good = FingerprintRecord("m", 0, 4, "prevalence", {"udp/53": 1.0}, True)
    decision = DecisionRecord("m", 0, 4, "prevalence", "plug", 0.8, {"matched": []}, 5.0)
    store.add_results([good], [decision], meta={"live_next_unit": "4"}, when=5.0)
    broken = DecisionRecord("m", 4, 8, "prevalence", None, 0.1, {}, 6.0)  # type: ignore[arg-type]
    with pytest.raises(store.integrity_error):
        store.add_results([good], [broken], meta={"live_next_unit": "8"})
    assert store.fingerprints() == [good]
    assert store.decisions() == [decision]
    assert store.meta("live_next_unit") == "4"


def test_a_database_from_before_the_dst_table_flag_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE services (id INTEGER PRIMARY KEY, name TEXT NOT NULL, proto INTEGER, "
        "port_lo INTEGER NOT NULL, port_hi INTEGER NOT NULL, priority INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO services VALUES (1, 'tcp/443', 6, 443, 443, 100)")
    db.commit()
    db.close()
    with Storage(path) as store:
        assert store.services() == [Service(1, "tcp/443", 6, 443, 443, 100)]


def test_a_new_database_has_every_migration(store: Store) -> None:
    assert store.schema_version() == LATEST == 5


def accumulating(label: str, answer: str | None, unit: int) -> DecisionRecord:
    why: dict[str, object] = {"best_type": label}
    if answer is not None:
        why["accumulated"] = {"label": answer, "confidence": 0.9, "windows": unit}
    return DecisionRecord(MAC1, unit, unit + 4, "G4", label, 0.8, why, float(unit))


def test_decision_summaries_carry_the_accumulated_answer(store: Store) -> None:
    decided = [
        accumulating("plug", "plug", 1),
        accumulating("unknown", "plug", 5),
        accumulating("camera", None, 9),
    ]
    store.add_results([], decided, when=1.0)
    summaries = store.decision_summaries()
    assert [(s.label, s.accumulated) for s in summaries] == [
        ("plug", "plug"),
        ("unknown", "plug"),
        ("camera", None),
    ]
    assert [d.accumulated for d in store.decisions()] == ["plug", "plug", None]


def test_decisions_stored_before_accumulated_answers_get_theirs(db_location: str | Path) -> None:
    # A database of schema 4: decisions without the column, one explanation with an
    # accumulated answer and one without. Opening it reads the answers out of the explanations.
    with open_store(db_location) as store:
        with store.transaction() as sql:
            sql.run("ALTER TABLE decisions DROP COLUMN accumulated")
            sql.run("DELETE FROM schema_version WHERE version = 5")
            for record in (accumulating("unknown", "camera", 1), accumulating("plug", None, 5)):
                sql.run(
                    "INSERT INTO decisions (device, window_start_unit, window_end_unit, "
                    "representation, label, similarity, explanation, decided_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.device,
                        record.window_start_unit,
                        record.window_end_unit,
                        record.representation,
                        record.label,
                        record.similarity,
                        json.dumps(record.explanation),
                        record.decided_at,
                    ),
                )
        assert store.schema_version() == 4
    if isinstance(db_location, Path):
        # Read-only (a dashboard beside an older controller): nothing migrates, and the answers
        # are read out of the explanations.
        with Storage(db_location, readonly=True) as reader:
            assert reader.schema_version() == 4
            assert [(s.label, s.accumulated) for s in reader.decision_summaries()] == [
                ("unknown", "camera"),
                ("plug", None),
            ]
    with open_store(db_location) as again:
        assert again.schema_version() == 5
        assert [(s.label, s.accumulated) for s in again.decision_summaries()] == [
            ("unknown", "camera"),
            ("plug", None),
        ]


def test_a_database_from_before_schema_versions_keeps_its_devices(tmp_path: Path) -> None:
    path = tmp_path / "unversioned.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE devices (mac TEXT PRIMARY KEY, device_id INTEGER UNIQUE, label TEXT NOT "
        "NULL DEFAULT 'unknown', switch TEXT, port INTEGER, source TEXT NOT NULL, first_seen "
        "REAL NOT NULL, last_seen REAL NOT NULL)"
    )
    db.execute("INSERT INTO devices VALUES ('02:00:00:00:00:07', 7, 'plug', 's1', 2, 'x', 1, 2)")
    db.commit()
    db.close()
    with Storage(path) as store:
        assert store.schema_version() == LATEST
        assert store.devices() == [
            DeviceRow("02:00:00:00:00:07", 7, "plug", "s1", 2, "x", 1.0, 2.0)
        ]
    with Storage(path) as again:
        assert again.schema_version() == LATEST, "migrations run once"
        assert len(again.devices()) == 1


def test_a_database_of_a_later_schema_is_refused(db_location: str | Path) -> None:
    with open_store(db_location) as store, store.transaction() as sql:
        sql.run(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (LATEST + 1, "from the future", 0.0),
        )
    with pytest.raises(InputError, match=rf"schema version {LATEST + 1}; this svcfp knows up"):
        open_store(db_location)
    if isinstance(db_location, Path):
        # Nor is it read as if it were of this one (the dashboard, devices list).
        with pytest.raises(InputError, match=rf"schema version {LATEST + 1}; this svcfp knows up"):
            Storage(db_location, readonly=True)


def test_scopes_keep_controllers_devices_apart(db_location: str | Path) -> None:
    with open_store(db_location, scope="a") as a, open_store(db_location, scope="b") as b:
        a.put_devices([DeviceRow("02:00:00:00:00:01", 1, "plug", "s1", 1, "digest", 1.0, 1.0)])
        # The same device id in another scope: ids index each controller's own switch tables.
        b.put_devices([DeviceRow("02:00:00:00:00:02", 1, "camera", "s2", 1, "digest", 1.0, 1.0)])
        a.record_poll("s1", baseline(4, c1=(5, 50)), [ActivityRecord(MAC1, 3, "x", 5, 50)], 9.0)
        b.record_poll("s2", baseline(4, c1=(2, 20)), [ActivityRecord(MAC2, 3, "y", 2, 20)], 8.0)
        assert a.devices() == [DeviceRow(MAC1, 1, "plug", "s1", 1, "digest", 1.0, 9.0)]
        assert b.devices() == [DeviceRow(MAC2, 1, "camera", "s2", 1, "digest", 1.0, 8.0)]
        assert (
            a.activity()
            == b.activity()
            == [
                ActivityRecord(MAC1, 3, "x", 5, 50),
                ActivityRecord(MAC2, 3, "y", 2, 20),
            ]
        )
        a.claim_switches({"s1": "127.0.0.1:1"})
        b.claim_switches({"s2": "127.0.0.1:2"})
        a.claim_switches({"s1": "127.0.0.1:3"})
        with pytest.raises(InputError, match=r"switch s1 \(127.0.0.1:3\) is polled by .* 'a'"):
            b.claim_switches({"s2": "127.0.0.1:2", "s1": "127.0.0.1:9"})


def test_activity_is_ordered_by_bytes_whatever_the_locale(store: Store) -> None:
    rows = [ActivityRecord(d, 1, s, 1, 1) for d in ("b", "A", "a:1", "a1") for s in ("_x", "X")]
    store.record_poll("s1", Baseline.zeros(1), rows, 1.0)
    assert store.activity() == sorted(rows)


def test_an_unreachable_server_is_named_without_its_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(
        InputError,
        match=r"cannot connect to database "
        r"postgresql://svcfp@127.0.0.1:1/none:",
    ) as caught:
        open_store("postgresql://svcfp:secret@127.0.0.1:1/none")
    assert "secret" not in str(caught.value)


def test_a_write_of_many_rows_is_stored_whole(store: Store) -> None:
    # More rows than PostgreSQL's executemany batches hold: one transaction all the same.
    rows = [
        ActivityRecord(f"02:00:00:00:{d // 256:02x}:{d % 256:02x}", 1, "x", 1, 1)
        for d in range(12_000)
    ]
    store.record_poll("s1", baseline(4), rows, 1.0)
    assert store.activity() == sorted(rows)


@pytest.mark.postgres
def test_a_server_that_stops_answering_is_named_in_bounded_time(postgres: PostgresServer) -> None:
    plain = postgres.new_database()
    url = plain.replace("://svcfp@", "://svcfp:secret@")
    named = re.escape(plain)
    with open_store(url, timeout=1.0) as store:
        store.record_poll("s1", baseline(4, c1=(1, 10)), [ActivityRecord(MAC1, 1, "x", 1, 10)], 1.0)
        with postgres.frozen():
            started = time.monotonic()
            with pytest.raises(InputError, match=rf"database {named} did not answer within 1 s"):
                store.record_poll(
                    "s1", baseline(4, c1=(3, 30)), [ActivityRecord(MAC1, 1, "x", 2, 20)], 2.0
                )
            # The server's own limits cannot end this wait: the client cuts it off.
            assert time.monotonic() - started < 6.0
            with pytest.raises(InputError, match=rf"cannot connect to database {named}:") as caught:
                open_store(url, timeout=1.0)
            assert "secret" not in str(caught.value)
    with open_store(url) as again:
        assert again.activity() == [ActivityRecord(MAC1, 1, "x", 1, 10)], "the commit before stays"
        kept = again.baseline("s1", 4)
        assert kept is not None and kept.packets.tolist() == [0, 1, 0, 0]


def test_a_sqlite_write_lock_another_connection_keeps_is_named_in_bounded_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "svcfp.db"
    with open_store(path, timeout=0.5) as store:
        store.record_poll("s1", baseline(4, c1=(1, 10)), [ActivityRecord(MAC1, 1, "x", 1, 10)], 1.0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(
            InputError,
            match=rf"database {re.escape(str(path))} stayed locked by another connection for "
            r"0.5 s \(--db-timeout\); nothing of this write was stored",
        ):
            store.record_poll(
                "s1", baseline(4, c1=(3, 30)), [ActivityRecord(MAC1, 1, "x", 2, 20)], 2.0
            )
        assert time.monotonic() - started < 3.0
        other.execute("ROLLBACK")
        other.close()
        assert store.activity() == [ActivityRecord(MAC1, 1, "x", 1, 10)], "the commit before stays"
        # The lock is gone: the same connection writes again.
        store.record_poll("s1", baseline(4, c1=(3, 30)), [ActivityRecord(MAC1, 1, "x", 2, 20)], 2.0)
        assert store.activity() == [ActivityRecord(MAC1, 1, "x", 3, 30)]


@pytest.mark.postgres
def test_a_lock_another_session_holds_is_waited_for_in_bounded_time(
    postgres: PostgresServer,
) -> None:
    import psycopg

    url = postgres.new_database()
    with open_store(url, timeout=1.0) as store:
        store.record_poll("s1", baseline(4, c1=(1, 10)), [ActivityRecord(MAC1, 1, "x", 1, 10)], 1.0)
        with psycopg.connect(url) as other:
            other.execute("LOCK TABLE activity IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(InputError, match=r"waited 1 s \(--db-timeout\) for a lock another"):
                store.record_poll(
                    "s1", baseline(4, c1=(3, 30)), [ActivityRecord(MAC1, 1, "x", 2, 20)], 2.0
                )
            assert time.monotonic() - started < 3.0
        # The server ended the wait itself: the connection goes on.
        store.record_poll("s1", baseline(4, c1=(3, 30)), [ActivityRecord(MAC1, 1, "x", 2, 20)], 2.0)
        assert store.activity() == [ActivityRecord(MAC1, 1, "x", 3, 30)]
