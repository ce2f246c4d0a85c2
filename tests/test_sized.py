"""Sized intensity: packet sizes matched within a tolerance, by hand and against a brute-force
definition, independent of the observation rate, in explanations, prototypes and the
references file, and separating two models that differ by a few bytes per packet."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller.engine.activity import ActivityTable
from controller.engine.exporter import whole_windows
from controller.engine.identify import References, enroll, explain, identify
from controller.engine.representation import (
    SIZE_CEILING,
    SIZE_SPREADS,
    SIZE_TOLERANCE,
    SIZE_TOLERANCE_FLOOR,
    SIZED_BLOCKS,
    feature_matrix,
    parse_representation,
    representation_name,
    size_tolerances,
)
from controller.engine.similarity import similarity_matrix, similarity_pairs
from tests.support.engine import contributions


def one_service(size: int, packets: int = 10) -> np.ndarray:
    """Sized features of a window that used one service in each of its 4 units."""
    return feature_matrix(np.array([[1.0]]), [[4]], [[packets]], [[packets * size]], "sized")


def brute_force(x: np.ndarray, y: np.ndarray, tolerance: object = SIZE_TOLERANCE) -> float:
    """The sized similarity from its definition, service by service (τ one for all services,
    or one per service)."""
    n = x.size // SIZED_BLOCKS
    per_service = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (n,))
    low = high = 0.0
    for s in range(n):
        for block in range(3):
            a, b = x[block * n + s], y[block * n + s]
            low, high = low + min(a, b), high + max(a, b)
        a, b = x[3 * n + s], y[3 * n + s]
        k = 0.0
        if a > 0 and b > 0:
            gap = abs(x[4 * n + s] / a - y[4 * n + s] / b)
            k = max(0.0, 1.0 - gap / float(per_service[s]))
        low, high = low + k * min(a, b), high + a + b - k * min(a, b)
    return 1.0 if high == 0 else low / high


def random_pair(
    seed: int, rows: int, services: int, use: float, sizes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two random sized feature matrices over `services`, each service used with probability
    `use`, mean sizes drawn from `sizes` (near one another, so that many pairs match partly);
    with the counts (active units, packets, prevalence) they came from."""
    rng = np.random.default_rng(seed)
    used = rng.random((2, rows, services)) < use
    active = np.where(used, rng.integers(1, 6, used.shape), 0)
    packets = np.where(used, rng.integers(1, 50, used.shape), 0)
    sent = packets * rng.integers(*sizes, used.shape)
    prevalence = active / 5.0
    a, b = (feature_matrix(prevalence[i], active[i], packets[i], sent[i], "sized") for i in (0, 1))
    return a, b, (active, packets, prevalence)


class TestSimilarity:
    def test_names_and_parsing(self) -> None:
        assert representation_name(None, "sized") == "prevalence+intensity+sizes"
        assert representation_name(1, "sized") == "list+intensity+sizes"
        assert parse_representation("list+intensity+sizes") == (1, "sized")
        assert parse_representation("intensity+sizes") == (None, "sized")
        assert parse_representation("G=4+sized") == (4, "sized")

    def test_a_few_bytes_apart_by_hand(self) -> None:
        x, y = one_service(353), one_service(357)
        size_a, size_b = (math.log2(s) / math.log2(SIZE_CEILING) for s in (353, 357))
        k = 1.0 - math.log(357 / 353) / SIZE_TOLERANCE
        assert 0.4 < k < 0.45
        # prevalence 1 and share 1 on both sides, log sizes, then the matched mass.
        expected = (1 + 1 + size_a + k) / (1 + 1 + size_b + 2 - k)
        assert similarity_matrix(x, y, sized=True)[0, 0] == pytest.approx(expected, abs=1e-12)
        assert similarity_pairs(x, y, sized=True)[0] == pytest.approx(expected, abs=1e-12)
        why = explain(x[0], y[0], ["udp/67"], sized=True)
        assert why.similarity == pytest.approx(expected, abs=1e-12)
        assert why.matched[0].share == pytest.approx(expected, abs=1e-12)
        # The plain log-size weight hardly sees the same 4 bytes.
        assert min(size_a, size_b) / max(size_a, size_b) > 0.998

    def test_equal_sizes_match_and_sizes_beyond_the_tolerance_do_not(self) -> None:
        assert similarity_matrix(one_service(353), one_service(353), sized=True)[0, 0] == 1.0
        far = math.ceil(353 * math.exp(SIZE_TOLERANCE)) + 1
        x, y = one_service(353), one_service(far)
        size_a, size_b = (math.log2(s) / math.log2(SIZE_CEILING) for s in (353, far))
        expected = (2 + size_a) / (2 + size_b + 2)
        assert similarity_matrix(x, y, sized=True)[0, 0] == pytest.approx(expected, abs=1e-12)

    def test_matrix_and_pairs_agree_with_the_definition(self) -> None:
        services = 7
        a, b, (active, packets, prevalence) = random_pair(4, 12, services, 0.5, (300, 312))
        rng = np.random.default_rng(5)
        matrix = similarity_matrix(a, b, sized=True)
        expected = np.array([[brute_force(x, y) for y in b] for x in a])
        assert matrix == pytest.approx(expected, abs=1e-12)
        # References of sizes spread far apart: each block matches only the few near its own.
        spread = packets[1] * rng.integers(40, 1500, packets.shape[1:])
        far = feature_matrix(prevalence[1], active[1], packets[1], spread, "sized")
        assert similarity_matrix(a, far, sized=True) == pytest.approx(
            np.array([[brute_force(x, y) for y in far] for x in a]), abs=1e-12
        )
        # A matched mass other than the prevalence weight (as in a rounded prototype), with the
        # same sizes: the matrix takes its general path and still follows the definition.
        other = b.copy()
        other[:, 3 * services :] *= 0.5
        assert similarity_matrix(a, other, sized=True) == pytest.approx(
            np.array([[brute_force(x, y) for y in other] for x in a]), abs=1e-12
        )
        assert similarity_pairs(a, b, sized=True) == pytest.approx(np.diag(expected), abs=1e-12)
        assert np.all((matrix >= 0) & (matrix <= 1))
        partly = (expected > 0) & (expected < 1)
        assert partly.sum() > 100
        for i in range(len(a)):
            why = explain(a[i], b[i], [f"s{j}" for j in range(services)], sized=True)
            assert math.fsum(c.share for c in contributions(why)) == pytest.approx(
                expected[i, i], abs=1e-12
            )

    def test_a_tolerance_per_service_follows_the_definition(self) -> None:
        services = 5
        a, b, _ = random_pair(9, 10, services, 0.6, (300, 330))
        tolerance = np.array([0.005, 0.01, 0.02, 0.05, 0.3])
        expected = np.array([[brute_force(x, y, tolerance) for y in b] for x in a])
        assert similarity_matrix(a, b, True, tolerance) == pytest.approx(expected, abs=1e-12)
        assert similarity_pairs(a, b, True, tolerance) == pytest.approx(
            np.diag(expected), abs=1e-12
        )
        names = [f"s{j}" for j in range(services)]
        for i in range(len(a)):
            why = explain(a[i], b[i], names, sized=True, tolerance=tolerance)
            assert why.similarity == pytest.approx(expected[i, i], abs=1e-12)
            assert math.fsum(c.share for c in contributions(why)) == pytest.approx(
                expected[i, i], abs=1e-12
            )
        # A wider τ on a service can only match its sizes more.
        wider = similarity_matrix(a, b, True, tolerance * 2.0)
        assert np.all(wider >= similarity_matrix(a, b, True, tolerance) - 1e-12)

    def test_features_do_not_move_when_every_count_is_scaled(self) -> None:
        weights = np.array([[1.0, 0.5, 0.0]])
        active, packets, sent = [[4, 2, 0]], np.array([[40, 7, 0]]), np.array([[5_200, 2_471, 0]])
        base = feature_matrix(weights, active, packets, sent, "sized")
        for scale in (2, 10, 1000):
            scaled = feature_matrix(weights, active, packets * scale, sent * scale, "sized")
            assert np.allclose(base, scaled, rtol=0, atol=1e-12)


def sibling_captures(sizes: dict[str, int]) -> tuple[ActivityTable, dict[str, str]]:
    """Types whose captures use the same services in the same proportions and differ only in
    the size of one service's packets (a DHCP request that carries the model's name)."""
    rows = []
    labels = {}
    for kind, dhcp in sizes.items():
        for i in range(4):
            track = f"{kind}{i}"
            labels[track] = kind
            for u in range(20):
                rows.append((track, u, "tcp/443", 10 + i % 2, (10 + i % 2) * (130 + i)))
                rows.append((track, u, "tcp/80", 10, 10 * (62 + i % 2)))
                if u in (0, 1):
                    rows.append((track, u, "udp/67", 1, dhcp))
    return ActivityTable.from_records(rows, unit_seconds=1.0), labels


def usage_of(sizes: list[list[float]], packets: int = 10) -> np.ndarray:
    """References' usage (units, packets, bytes) with the given mean sizes; 0: not used."""
    size = np.array(sizes, dtype=np.float64)
    used = size > 0
    return np.stack(
        [
            np.where(used, 1, 0),
            np.where(used, packets, 0),
            np.where(used, np.round(size * packets), 0),
        ]
    ).astype(np.int64)


class TestLearnedTolerance:
    def test_by_hand(self) -> None:
        # Services: a DHCP request two types repeat to the byte, a size that varies a little
        # within each type, a service only one reference uses.
        usage = usage_of(
            [
                [353, 62.0, 0],
                [353, 62.4, 0],
                [353, 62.2, 90],
                [357, 63.6, 0],
                [357, 64.2, 0],
            ]
        )
        types = np.array([0, 0, 0, 1, 1])
        tolerance = size_tolerances(usage, types, 2)
        sizes = usage[2] / np.maximum(usage[1], 1)
        spread = [float(np.std(np.log(sizes[types == t, 1]), ddof=1)) for t in (0, 1)]
        assert tolerance[0] == SIZE_TOLERANCE_FLOOR
        assert tolerance[1] == pytest.approx(SIZE_SPREADS * (spread[0] + spread[1]) / 2, rel=1e-9)
        assert tolerance[2] == SIZE_TOLERANCE

    def test_the_median_type_decides(self) -> None:
        # Three types repeat their size; a fourth varies widely: τ stays at the floor.
        rows = [[100.0], [100.0], [200.0], [200.0], [300.0], [300.0], [150.0], [600.0]]
        tolerance = size_tolerances(usage_of(rows), np.array([0, 0, 1, 1, 2, 2, 3, 3]), 4)
        assert tolerance[0] == SIZE_TOLERANCE_FLOOR
        assert size_tolerances(usage_of(rows), np.zeros(8, dtype=np.int64), 0)[0] == (
            SIZE_TOLERANCE
        )

    def test_a_noisy_service_stops_outweighing_a_fixed_one(self) -> None:
        """Two models alike but for the DHCP request's size (353 against 357 B); a third service
        whose mean size wanders between captures of either model (its cloud's answers). A
        motion sensor's capture whose noisy service lies near the water sensor's: with τ = 2 %
        for every service the wandering size decides and the answer is wrong; with τ learned
        per service the DHCP size decides."""
        rows = []
        labels = {}
        noisy = {"motion": [125, 128, 131, 126], "water": [133, 135, 131, 137]}
        for kind, dhcp in (("motion", 353), ("water", 357)):
            for i, wander in enumerate(noisy[kind]):
                track = f"{kind}{i}"
                labels[track] = kind
                for u in range(10):
                    rows.append((track, u, "tcp/443", 10, 10 * wander))
                    rows.append((track, u, "tcp/80", 10, 10 * 62))
                    if u == 0:
                        rows.append((track, u, "udp/67", 1, dhcp))
        rows += [("probe", u, "tcp/443", 10, 1340) for u in range(10)]
        rows += [("probe", u, "tcp/80", 10, 620) for u in range(10)] + [
            ("probe", 0, "udp/67", 1, 353)
        ]
        # Service Lists: every service used weighs 1, the DHCP request as much as the rest.
        fps = whole_windows(ActivityTable.from_records(rows, 1.0), 1, intensity="sized")
        train = fps.select(np.array([i for i, n in enumerate(fps.device_names) if n != "probe"]))
        probe = fps.select(np.array([fps.device_names.index("probe")]))
        refs = enroll(train, labels, theta=0.0)
        learned = refs.tolerance()
        assert isinstance(learned, np.ndarray)
        by_service = dict(zip(refs.services, learned.tolist(), strict=True))
        assert by_service["udp/67"] == SIZE_TOLERANCE_FLOOR
        assert by_service["tcp/443"] > 0.05
        (decision,) = identify(probe, refs)
        assert decision.best_type == "motion"
        axis = refs.services
        fixed = similarity_matrix(probe.features(axis), refs.features(), True, SIZE_TOLERANCE)
        best = {t: fixed[0, [i for i, x in enumerate(refs.labels) if x == t]].max() for t in noisy}
        assert best["water"] > best["motion"]
        request = next(c for c in decision.explanation.matched if c.service == "udp/67")
        assert request.bytes_per_packet == 353.0
        assert request.size_tolerance == SIZE_TOLERANCE_FLOOR
        assert "353 B/packet (references 353-353, sizes matched within 0.5 %)," in (
            request.describe(1.0)
        )


class TestIdentification:
    def test_models_a_few_bytes_apart_are_told_apart(self) -> None:
        activity, labels = sibling_captures({"motion": 353, "water": 357})
        found = {}
        for intensity in ("relative", "sized"):
            fps = whole_windows(activity, None, intensity=intensity)
            train = fps.select(
                np.array([i for i, n in enumerate(fps.device_names) if n[-1] != "3"])
            )
            test = fps.select(np.array([i for i, n in enumerate(fps.device_names) if n[-1] == "3"]))
            refs = enroll(train, labels, theta=0.0)
            found[intensity] = identify(test, refs)
        for decision in found["sized"]:
            assert decision.best_type == labels[decision.device]
            assert decision.runner_up_similarity is not None
            assert decision.similarity - decision.runner_up_similarity > 0.01
            dhcp = next(c for c in decision.explanation.matched if c.service == "udp/67")
            assert dhcp.bytes_per_packet == dhcp.reference_bytes_per_packet[0]  # type: ignore[index]
        for decision in found["relative"]:
            assert decision.runner_up_similarity is not None
            assert abs(decision.similarity - decision.runner_up_similarity) < 0.001

    def test_a_prototype_matches_the_mean_log_size_of_its_references(self) -> None:
        rows = [("a", 0, "udp/67", 2, 200), ("b", 0, "udp/67", 2, 242), ("c", 0, "udp/67", 5, 550)]
        fps = whole_windows(
            ActivityTable.from_records(rows, unit_seconds=1.0), None, intensity="sized"
        )
        refs = enroll(
            fps.select(np.array([0, 1])), {"a": "t", "b": "t"}, mode="centroid", theta=0.0
        )
        (prototype,) = refs.centroids()
        mass, logged = prototype[3], prototype[4]
        assert math.exp(logged / mass) == pytest.approx(110.0, rel=1e-12)
        (decision,) = identify(fps.select(np.array([2])), refs)
        # 110 B per packet, the geometric mean of 100 and 121: every weight matches.
        assert decision.similarity == pytest.approx(1.0, abs=1e-12)

    def test_references_file_round_trip(self, tmp_path: Path) -> None:
        activity, labels = sibling_captures({"motion": 353, "water": 357})
        fps = whole_windows(activity, None, intensity="sized")
        refs = enroll(fps, labels, percentile=5.0, per_type=True)
        path = tmp_path / "refs.json"
        refs.save(path)
        back = References.load(path)
        assert back.intensity == "sized" and back.representation == "prevalence+intensity+sizes"
        assert identify(fps, back) == identify(fps, refs)
