"""The built-in data sets (no network).

``breast-cancer``
    scikit-learn's bundled Wisconsin diagnostic set: 569 rows, 30 features; the
    positive class (the one a detector exists to catch) is ``malignant``.
``flows`` / ``flows:N``
    a synthetic network-flow intrusion set generated from a seed (20,000 rows by
    default): 23 named flow features, about 30 % attacks. The label depends only
    on :data:`FLOW_RELEVANT_FEATURES` (recorded as ground truth): a flow is an
    attack when the mean of those four features, each in [0, 1], exceeds
    :data:`FLOW_THRESHOLD`. About 97 % of rows lie more than
    :data:`FLOW_MARGIN` from that boundary, so an L-inf perturbation of 0.05 on
    the scaled features cannot cross it; the rest sit close to it on purpose.
``flows-mixed`` / ``flows-mixed:N``
    the same flows (6,000 rows by default) as a mixed-type record: ``protocol`` becomes a categorical column
    (``tcp``/``udp``/``icmp``) and ``service`` (by protocol) and ``conn_state`` join it, with a numeric
    ``response_ratio`` in [0, 0.4] or [0.6, 1]. A second attack family hinges on a category combined with that
    rate: a ``udp`` flow to ``dns`` whose ``response_ratio`` exceeds 0.5 is an attack (amplification), whatever
    the other features say. Its per-sample ground truth (``relevant_mask``) marks ``protocol``, ``service`` and
    ``response_ratio`` on those rows, the four rule features on the others.
``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as
    (N, 1, 8, 8) images, scaled by one range for all pixels.
``sequences`` / ``sequences:N``
    synthetic event sequences (4,000 by default) of 16 steps with 4 features
    each. Half carry a trigger: two consecutive steps whose first two features
    are both above 0.88; no other step has both above 0.85. The trigger's steps
    are recorded per sample as ground truth for localisation.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits

from detectors.inputs import kind_named
from detectors.table import Table

BUILTIN = ("breast-cancer", "flows", "flows-mixed", "digits", "sequences")
SIZED = {"flows": 20_000, "flows-mixed": 6_000, "sequences": 4_000}
FLOWS_DEFAULT_ROWS = SIZED["flows"]
SEQUENCE_STEPS, SEQUENCE_FEATURES, TRIGGER_LENGTH = 16, 4, 2
FLOW_RELEVANT_FEATURES = ("syn_ratio", "rst_ratio", "dst_port_entropy", "payload_entropy")
FLOW_THRESHOLD = 0.575
FLOW_MARGIN = 0.06
FLOW_ATTACK_SHARE = 0.30
_FLOW_HARD_SHARE = 0.03
_FLOW_CLOSENESS = 0.04  # beyond the margin, distance to the boundary falls off like exp(-d / 0.04)


def breast_cancer() -> Table:
    bunch = load_breast_cancer()
    return Table(
        name="breast-cancer", x=bunch.data.astype(np.float64), y=bunch.target.astype(np.int64),
        feature_names=[str(n) for n in bunch.feature_names], class_names=[str(n) for n in bunch.target_names],
        positive_class=list(bunch.target_names).index("malignant"),
    )


def make_flows(rows: int = FLOWS_DEFAULT_ROWS, *, seed: int = 0) -> Table:
    """Synthetic network flows whose label depends only on FLOW_RELEVANT_FEATURES."""
    rng = np.random.default_rng(seed)
    n_attack = int(round(FLOW_ATTACK_SHARE * rows))
    unit = _flow_relevant_unit(rng, rows, n_attack)
    y = (unit.mean(axis=1) > FLOW_THRESHOLD).astype(np.int64)
    n = rows
    duration = np.minimum(rng.lognormal(0.0, 1.5, n), 3600.0)
    src_packets = 1 + rng.poisson(rng.lognormal(2.0, 1.0, n))
    dst_packets = rng.poisson(rng.lognormal(1.8, 1.0, n))
    packets = src_packets + dst_packets
    src_bytes = src_packets * rng.uniform(40, 1500, n)
    dst_bytes = dst_packets * rng.uniform(40, 1500, n)
    iat_mean = duration / packets
    columns = {
        "duration": duration,
        "src_bytes": np.round(src_bytes),
        "dst_bytes": np.round(dst_bytes),
        "src_packets": src_packets.astype(np.float64),
        "dst_packets": dst_packets.astype(np.float64),
        "mean_packet_size": (src_bytes + dst_bytes) / packets,
        "flow_iat_mean": iat_mean,
        "flow_iat_std": iat_mean * rng.uniform(0.0, 2.0, n),
        "bytes_per_second": np.minimum((src_bytes + dst_bytes) / np.maximum(duration, 1e-3), 1e7),
        "packets_per_second": np.minimum(packets / np.maximum(duration, 1e-3), 1e4),
        "syn_ratio": unit[:, 0],
        "rst_ratio": unit[:, 1],
        "ack_count": rng.binomial(packets, 0.8).astype(np.float64),
        "fin_count": rng.binomial(2, 0.5, n).astype(np.float64),
        "psh_count": rng.binomial(packets, 0.3).astype(np.float64),
        "urg_count": rng.poisson(0.05, n).astype(np.float64),
        "ttl": rng.choice([32.0, 64.0, 128.0, 255.0], n, p=[0.1, 0.5, 0.3, 0.1]) - rng.integers(0, 20, n),
        "window_size": rng.integers(0, 65536, n).astype(np.float64),
        "src_port_bucket": rng.choice([0.0, 1.0, 2.0], n, p=[0.05, 0.25, 0.70]),
        "dst_port_bucket": rng.choice([0.0, 1.0, 2.0], n, p=[0.60, 0.30, 0.10]),
        "protocol": rng.choice([0.0, 1.0, 2.0], n, p=[0.80, 0.15, 0.05]),
        "dst_port_entropy": 10.0 * unit[:, 2],
        "payload_entropy": 8.0 * unit[:, 3],
    }
    return Table(
        name="flows" if rows == FLOWS_DEFAULT_ROWS else f"flows:{rows}",
        x=np.column_stack(list(columns.values())), y=y, feature_names=list(columns),
        class_names=["benign", "attack"], positive_class=1, relevant_features=list(FLOW_RELEVANT_FEATURES),
    )


PROTOCOLS = ("tcp", "udp", "icmp")  # the order of flows' numeric protocol codes 0, 1, 2
FLOW_SERVICES = {"tcp": (("http", "ssh", "smtp", "ftp", "other"), (0.5, 0.15, 0.15, 0.1, 0.1)),
                 "udp": (("dns", "ntp", "other"), (0.6, 0.2, 0.2)), "icmp": (("other",), (1.0,))}
CONN_STATES = (("SF", "S0", "REJ", "RSTO"), (0.7, 0.1, 0.1, 0.1))
AMPLIFICATION = ("protocol", "service", "response_ratio")  # the category x rate attack family's columns
AMPLIFICATION_RATIO = 0.5


def make_mixed_flows(rows: int = SIZED["flows-mixed"], *, seed: int = 0) -> Table:
    """:func:`make_flows` with categorical protocol, service and connection state and the amplification family:
    udp to dns with a response ratio above :data:`AMPLIFICATION_RATIO` is an attack."""
    table = make_flows(rows, seed=seed)
    rng = np.random.default_rng([seed, 1])  # its own stream: the flows' columns are make_flows' own
    names = list(table.feature_names)
    at = names.index("protocol")
    protocol = np.array(PROTOCOLS)[table.x[:, at].astype(np.int64)]
    service = np.empty(rows, dtype=object)
    for name, (choices, p) in FLOW_SERVICES.items():
        where = protocol == name
        service[where] = rng.choice(choices, int(where.sum()), p=p)
    state = rng.choice(CONN_STATES[0], rows, p=CONN_STATES[1])
    ratio = np.where(rng.random(rows) < 0.5, rng.uniform(0.0, 0.4, rows), rng.uniform(0.6, 1.0, rows))
    amplification = (protocol == "udp") & (service == "dns") & (ratio > AMPLIFICATION_RATIO)
    columns = {"protocol": protocol, "service": service, "conn_state": state}
    categories = {name: list(dict.fromkeys(values.tolist())) for name, values in columns.items()}
    indices = {name: np.array([categories[name].index(v) for v in values], dtype=np.float64)
               for name, values in columns.items()}
    x = np.column_stack([np.delete(table.x, at, axis=1), indices["protocol"], indices["service"],
                         indices["conn_state"], ratio])
    feature_names = [n for n in names if n != "protocol"] + ["protocol", "service", "conn_state", "response_ratio"]
    mask = np.zeros(x.shape, dtype=bool)
    mask[:, [feature_names.index(n) for n in FLOW_RELEVANT_FEATURES]] = ~amplification[:, None]
    mask[:, [feature_names.index(n) for n in AMPLIFICATION]] = amplification[:, None]
    return Table(
        name="flows-mixed" if rows == SIZED["flows-mixed"] else f"flows-mixed:{rows}", x=x,
        y=(table.y.astype(bool) | amplification).astype(np.int64), feature_names=feature_names,
        class_names=list(table.class_names), positive_class=1,
        relevant_features=list(FLOW_RELEVANT_FEATURES) + list(AMPLIFICATION), relevant_mask=mask,
        categories=categories,
    )


def _flow_relevant_unit(rng: np.random.Generator, rows: int, n_attack: int) -> np.ndarray:
    """Relevant features in [0, 1]^4: ``n_attack`` rows above the threshold, most outside the margin."""
    picked = {0: [], 1: []}
    wanted = {0: rows - n_attack, 1: n_attack}
    while any(sum(len(p) for p in picked[c]) < wanted[c] for c in (0, 1)):
        candidates = rng.random((4 * rows + 64, len(FLOW_RELEVANT_FEATURES)))
        score = candidates.mean(axis=1)
        distance = np.abs(score - FLOW_THRESHOLD)
        close_call = rng.random(len(score)) < np.exp(-(distance - FLOW_MARGIN) / _FLOW_CLOSENESS)
        keep = ((distance > FLOW_MARGIN) & close_call) | (rng.random(len(score)) < _FLOW_HARD_SHARE * 0.3)
        for label in (0, 1):
            picked[label].append(candidates[keep & ((score > FLOW_THRESHOLD) == bool(label))])
    unit = np.concatenate(
        [np.concatenate(picked[0])[: wanted[0]], np.concatenate(picked[1])[: wanted[1]]]
    )
    return unit[rng.permutation(rows)]


def digits() -> Table:
    bunch = load_digits()
    images = bunch.images.astype(np.float64)[:, None, :, :]
    image = kind_named("image")
    return Table(
        name="digits", x=images, y=bunch.target.astype(np.int64), feature_names=image.feature_names(images.shape[1:]),
        class_names=[str(c) for c in bunch.target_names], positive_class=None, scale_mode=image.scale_mode,
    )


def make_sequences(rows: int = 4_000, *, seed: int = 0) -> Table:
    """Event sequences; label 1 when a two-step trigger is present (positions recorded per sample)."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, SEQUENCE_STEPS, SEQUENCE_FEATURES))
    both_high = (x[:, :, 0] > 0.85) & (x[:, :, 1] > 0.85)
    while both_high.any():  # background steps never look like a trigger step
        x[both_high, 1] = rng.random(int(both_high.sum())) * 0.85
        both_high = (x[:, :, 0] > 0.85) & (x[:, :, 1] > 0.85)
    y = (rng.random(rows) < 0.5).astype(np.int64)
    mask = np.zeros((rows, SEQUENCE_STEPS, SEQUENCE_FEATURES), dtype=bool)
    starts = rng.integers(0, SEQUENCE_STEPS - TRIGGER_LENGTH + 1, rows)
    for row in np.flatnonzero(y):
        steps = slice(starts[row], starts[row] + TRIGGER_LENGTH)
        x[row, steps, :2] = rng.uniform(0.88, 1.0, (TRIGGER_LENGTH, 2))
        mask[row, steps, :] = True
    sequence = kind_named("sequence")
    return Table(
        name="sequences" if rows == SIZED["sequences"] else f"sequences:{rows}", x=x, y=y,
        feature_names=sequence.feature_names((SEQUENCE_STEPS, SEQUENCE_FEATURES)),
        class_names=["normal", "trigger"], positive_class=1, scale_mode=sequence.scale_mode, relevant_mask=mask,
    )
