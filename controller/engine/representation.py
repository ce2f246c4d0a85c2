"""Representations of service usage (DESIGN §5): the Service List, the Service Prevalence and the
generalised representation of granularity G between them, with or without intensity.

Per device and observation window of N units, a service's weight is
- the *prevalence* P(s) = (units in which s was used) / N, exactly;
- quantised to G levels, q(s) = ceil(P(s)·G) / G. G = 1 is the Service List (1 for every service
  used at least once), G = ∞ (``granularity=None``) is the Service Prevalence itself.

Intensity says *how much* of each service a device uses, from the packets and bytes the switch
(or a flow reader) counts in the units where the service was used. Two more non-negative weights
per service join its prevalence weight, so a fingerprint stays a weight vector, similarity stays
the weighted Jaccard index in [0, 1], and every service's share of a similarity stays exact:

- ``relative`` (the default intensity): the service's share of the window's packets on a log
  scale of `SHARE_DECADES` decades, 1 + log10(share)/4 clipped to [0, 1] (all of the traffic → 1,
  a ten-thousandth or less → 0), and its mean packet size on a log scale, log2(bytes/packet) /
  log2(`SIZE_CEILING`). Both are ratios of counts of one window, so they do not move when every
  count is scaled: a device measured by 1:N sampled flow records, observed in a quieter window,
  or over a shorter one keeps its intensity weights (up to sampling noise).
- ``absolute``: packets per active unit on a log scale, log(1 + rate)/log(1 + `RATE_CEILING`),
  instead of the share, with the same size weight. It depends on the observation rate (sampling
  divides it by N), which is why it is not the default; it is kept to show that on data.
- ``sized``: the relative weights, and each service's mean packet size matched within a
  tolerance. Many services' packets have sizes a device model fixes (a DHCP request carries the
  model's host name, a vendor's keep-alive its own payload), so two models that use the same
  services in the same proportions often still differ by a few bytes per packet — which the log
  size weight, min/max of two logarithms, barely sees (353 against 357 B is 0.998). A third
  weight per service, its prevalence weight again, counts as shared only as far as the sizes
  agree: of two fingerprints with weights a, b and mean sizes x, y it adds
  k·min(a, b) to Σmin and a + b − k·min(a, b) to Σmax, k = max(0, 1 − |ln x − ln y| / τ).
  That is the weighted Jaccard of two histograms of mass a and b over packet size whose
  overlap is k·min(a, b), so the similarity stays in [0, 1] with exact per-service shares.
  References learn τ per service from their own counts (`size_tolerances`): a size a model
  repeats to the byte matches within 0.5 %, one that wanders between captures within its
  wander. The features carry, after the weights, the mass times ln(size) of every
  service (`SIZED_BLOCKS`): not a weight, the similarity reads the size back from it, and a
  mean over references (a prototype) is then the mass-weighted mean log size.

Logarithms because intensities of one service on one device type spread over orders of
magnitude between windows, while the weighted Jaccard of two weights is their ratio: on a log
scale 40 against 60 packets is a near match, 4 against 6,000 is not.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.base.errors import InputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_THRESHOLD = 1
"""h: packets of a service a device must send in a unit for the unit to count as using it."""
DEFAULT_GRANULARITY: int | None = None
"""G: quantisation levels of the default representation (1 = Service List, None = prevalence).

Prevalence is the default because it identified best on real captures (IoT Sentinel, one window
per capture: closed-set accuracy 0.83 against 0.80 for G=4 and 0.75 for the list); smaller G
remains the choice where noise or convergence speed matter more."""
# Weights are ceil(count · G) in 64-bit integers: far below where that overflows, a larger G
# is 'prevalence' to within 1/G.
MAX_GRANULARITY = 1_000_000

DEFAULT_UNIT_SECONDS = 3600.0
"""The default time unit: one hour."""

Intensity = Literal["relative", "absolute", "sized"]
INTENSITIES: tuple[Intensity, ...] = ("relative", "absolute", "sized")
INTENSITY_NAMES: dict[Intensity, str] = {
    "relative": "intensity",
    "absolute": "rate",
    "sized": "intensity+sizes",
}
"""How a representation's name says its intensity: "prevalence+intensity", "G=4+rate",
"list+intensity+sizes"."""
DEFAULT_INTENSITY: Intensity | None = "sized"
"""The intensity enrolment uses unless told otherwise (`--intensity none`: presence only).

Relative intensity identifies at least as well as presence on every real data set, with the
built-in catalogue and with one learned from the training split: IoT Sentinel (group split, 274
test captures) prevalence 0.825 → 0.850, list 0.708 → 0.869, after 30 s 0.807 → 0.818;
tj-oconnor (instance split, 76 test windows) prevalence 0.947 → 1.000, after one hour 0.667 →
1.000. Being a ratio of counts of one window it is unchanged by sampling and quieter windows.

Sized intensity keeps all of that and matches packet sizes too, which helped on every real
data set at the default prevalence and most of all where relative intensity was weakest:
tj-oconnor open-set AUROC 0.983 → 1.000 and under 1:10 sampling 0.969 → 1.000 of the windows
right (list 0.962 → 1.000); the MUD profiles' flow summaries (43 test summaries, list)
0.744 → 0.837, macro-F1 0.595 → 0.736; IoT Sentinel with the train-learned catalogue list
0.869 → 0.883 (macro-F1 0.832 → 0.864, AUROC 0.789 → 0.835, after 30 s 0.799 → 0.883),
prevalence 0.850 → 0.854, at 5 s units 0.792 → 0.832, and a calibration error of 0.06 instead
of 0.10–0.18. One setting lost: IoT Sentinel list with the built-in catalogue, 0.869 → 0.821,
where the Edimax 2101W's later captures send the 1101W's exact sizes.

Those numbers are for one τ = 2 % on every service, and the train-learned ones for the learned
catalogue's earlier service-port rule (see `controller.engine.learned.service_ports`). With τ
learned per service from the references (the default) and the present rule: IoT Sentinel list,
train-learned, 0.931 (macro-F1 0.917, AUROC 0.861, after 30 s 0.850; relative intensity 0.905;
the D-Link motion sensor 1 → 9 of 10), list with the built-in catalogue 0.861, prevalence
0.883, at 5 s units 0.887; the MUD flow summaries 0.884 (macro-F1 0.796); tj-oconnor 1.000 for
prevalence and list, under 1:10 sampling too."""
SHARE_DECADES = 4.0
"""Decades of packet share the relative intensity weight spans (1e-4 of the packets and below
weigh 0)."""
SIZE_CEILING = 1600.0
"""Bytes per packet at which the size weight reaches 1 (an Ethernet frame of a full MTU)."""
RATE_CEILING = 10_000.0
"""Packets per active unit at which the absolute intensity weight reaches 1."""
SIZE_TOLERANCE = 0.02
"""τ: the difference of ln(bytes/packet) at which two mean packet sizes stop matching (2 %:
353 against 357 B matches 0.43, 353 against 360 B not at all), for a service whose τ the
references cannot learn (no type uses it in two references) and where no τ is given."""
SIZE_SPREADS = 3.0
"""References learn τ per service as this many times its typical within-type spread of
ln(bytes/packet) (`size_tolerances`)."""
SIZE_TOLERANCE_FLOOR = 0.005
"""The smallest learned τ (0.5 %): a size every reference of a type repeats to the byte (a DHCP
request's 353 B) still matches itself, and 353 against 357 B (1.1 %) no longer matches."""
SIZED_BLOCKS = 5
"""Blocks of the sized features: prevalence, share, size, size-matched mass, mass·ln(size)."""


def representation_name(granularity: int | None, intensity: Intensity | None = None) -> str:
    """The human name of a representation: "list" (G=1), "prevalence" (G=∞) or "G=<n>", with
    "+intensity" (relative) or "+rate" (absolute) when it weighs intensity too."""
    if granularity is None:
        base = "prevalence"
    elif granularity == 1:
        base = "list"
    else:
        base = f"G={granularity}"
    return base if intensity is None else f"{base}+{INTENSITY_NAMES[intensity]}"


def parse_representation(text: str) -> tuple[int | None, Intensity | None]:
    """Parse "<granularity>[+intensity|+rate|+intensity+sizes]" (e.g. "prevalence+intensity",
    "G=4", "list+rate") into (granularity, intensity); a bare intensity name ("intensity",
    "intensity+sizes") stands for prevalence with it."""
    lowered = text.strip().lower()
    if lowered in INTENSITY_NAMES.values():
        lowered = "prevalence+" + lowered
    base, plus, extra = lowered.partition("+")
    granularity = parse_granularity(base)
    if not plus and not extra:
        return granularity, None
    for intensity, name in INTENSITY_NAMES.items():
        if extra.strip() in (name, intensity):
            return granularity, intensity
    raise InputError(
        f"representation {text!r}: after '+' expected "
        + " or ".join(repr(n) for n in INTENSITY_NAMES.values())
    )


def parse_granularity(text: str) -> int | None:
    """Parse a granularity flag: "list", "prevalence"/"inf", or a positive integer."""
    lowered = text.strip().lower()
    if lowered in {"list", "1"}:
        return 1
    if lowered in {"prevalence", "inf", "infinity", "∞"}:
        return None
    try:
        value = int(lowered.removeprefix("g=").removeprefix("g"))
    except ValueError:
        raise InputError(
            f"granularity {text!r}: expected 'list', 'prevalence', 'inf' or a positive integer"
        ) from None
    if value < 1:
        raise InputError(f"granularity {text!r}: must be at least 1")
    if value > MAX_GRANULARITY:
        raise InputError(
            f"granularity {text!r}: at most {MAX_GRANULARITY} (a larger G differs from "
            "'prevalence' by less than 1/G)"
        )
    return value


def quantise(counts: npt.ArrayLike, n_units: npt.ArrayLike, granularity: int | None) -> FloatArray:
    """Representation weights from usage counts: ceil(counts/n · G)/G, or counts/n for G=None.

    `counts` holds, per service, the number of units in which it was used; `n_units` the window
    length (broadcast against `counts`). The ceiling is taken in integer arithmetic so that, e.g.,
    3 of 10 units at G=10 gives exactly 0.3 and not 0.4 from a rounding error in 0.3·10.
    """
    c = np.asarray(counts, dtype=np.int64)
    n = np.asarray(n_units, dtype=np.int64)
    if np.any(n < 1):
        raise ValueError("a window has at least one unit")
    if granularity is None:
        return c / n
    levels = -((-c * granularity) // n)
    return levels / float(granularity)


def intensity_weights(
    active: npt.ArrayLike, packets: npt.ArrayLike, bytes: npt.ArrayLike, intensity: Intensity
) -> tuple[FloatArray, FloatArray]:
    """The two intensity weights of every service (rows: fingerprints, columns: services) from
    its active units, packets and bytes in the window: (share or rate weight, size weight).

    Services a window did not use weigh 0 in both. Element-wise on exact integer sums, so the
    batch and streaming exporters, which sum the same counts, get bit-identical weights.
    """
    c = np.asarray(active, dtype=np.float64)
    p = np.asarray(packets, dtype=np.float64)
    b = np.asarray(bytes, dtype=np.float64)
    used = (c > 0) & (p > 0)
    safe_p = np.where(used, p, 1.0)
    if intensity != "absolute":
        total = np.sum(np.where(used, p, 0.0), axis=-1, keepdims=True)
        share = safe_p / np.where(total > 0, total, 1.0)
        first = np.clip(1.0 + np.log10(share) / SHARE_DECADES, 0.0, 1.0)
    else:
        rate = safe_p / np.where(used, c, 1.0)
        first = np.log1p(rate) / math.log1p(RATE_CEILING)
    size = np.log2(np.maximum(np.where(used, b, 1.0) / safe_p, 1.0)) / math.log2(SIZE_CEILING)
    return np.where(used, first, 0.0), np.where(used, size, 0.0)


def feature_matrix(
    weights: FloatArray,
    active: npt.ArrayLike | None,
    packets: npt.ArrayLike | None,
    bytes: npt.ArrayLike | None,
    intensity: Intensity | None,
) -> FloatArray:
    """What similarity compares: the prevalence weights, followed (with intensity) by the two
    intensity weights of every service: m × S, or m × 3S laid out [prevalence | first | size];
    sized: m × 5S, [prevalence | share | size | mass | mass·ln(bytes/packet)]."""
    if intensity is None:
        return weights
    if active is None or packets is None or bytes is None:
        raise InputError(
            f"the {INTENSITY_NAMES[intensity]} representation needs packet and byte counts, "
            "and these fingerprints carry none"
        )
    first, size = intensity_weights(active, packets, bytes, intensity)
    if intensity != "sized":
        return np.concatenate([weights, first, size], axis=-1)
    # The size weight is log2(bytes/packet) / log2(SIZE_CEILING): ln(bytes/packet) read back.
    logged = weights * size * math.log(SIZE_CEILING)
    return np.concatenate([weights, first, size, weights, logged], axis=-1)


def size_tolerances(usage: IntArray, type_index: IntArray, n_types: int) -> FloatArray:
    """τ per service, learned from labelled references: `SIZE_SPREADS` times the median over
    types of the standard deviation of ln(bytes/packet) among the type's references that use
    the service (types with at least two such references), at least `SIZE_TOLERANCE_FLOOR`;
    `SIZE_TOLERANCE` for a service no type uses in two references.

    `usage` is 3 × references × services (active units, packets, bytes), `type_index` each
    reference's type in 0..n_types-1. The median, not a pooled spread: a type whose packets on
    a service vary widely (mixed DHCP discovers and requests) must not loosen the match for
    the many types that repeat one size, and one type repeating a size must not tighten it for
    the rest. Sizes then match within their own noise: a service whose size a device model fixes
    tells two models apart by a byte, one whose size varies from capture to capture does not
    count against a reference for a difference of that order.
    """
    if n_types == 0:
        return np.full(usage.shape[2], SIZE_TOLERANCE)
    packets = usage[1].astype(np.float64)
    used = (usage[0] > 0) & (packets > 0)
    logs = np.log(np.where(used, usage[2], 1.0) / np.where(used, packets, 1.0))
    n = np.zeros((n_types, usage.shape[2]))
    total = np.zeros_like(n)
    squares = np.zeros_like(n)
    np.add.at(n, type_index, used)
    np.add.at(total, type_index, np.where(used, logs, 0.0))
    np.add.at(squares, type_index, np.where(used, logs * logs, 0.0))
    several = n >= 2
    mean = total / np.maximum(n, 1.0)
    variance = np.maximum(squares - n * mean * mean, 0.0) / np.maximum(n - 1.0, 1.0)
    # The median over the types with two references or more: +inf sorts the others last.
    spreads = np.sort(np.where(several, np.sqrt(variance), np.inf), axis=0)
    counts = several.sum(axis=0)
    columns = np.arange(usage.shape[2])
    low = spreads[np.maximum(counts - 1, 0) // 2, columns]
    high = spreads[counts // 2 - (counts == 0), columns]
    median = (low + high) / 2.0
    learned = np.maximum(SIZE_SPREADS * median, SIZE_TOLERANCE_FLOOR)
    out: FloatArray = np.where(counts > 0, learned, SIZE_TOLERANCE)
    return out
