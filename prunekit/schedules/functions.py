"""Sparsity (and learning-rate) schedules as pure functions of an explicit step."""
from __future__ import annotations


from ..errors import ConfigError

__all__ = ["one_shot", "at_init", "agp_cubic", "geometric_rounds", "dns_update_probability",
           "lr_rewind_factor"]


def _check_fraction(name: str, value, upper_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name}={value!r} must be a float in [0, 1) (fraction of weights removed), e.g. 0.9")


def _check_int(name: str, value, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} must be an int >= {low}")


def one_shot(step: int, *, sparsity: float, at: int = 0) -> float:
    """``sparsity`` from step ``at`` on, 0 before (prune once, then fine-tune).

    Example:
        >>> [one_shot(s, sparsity=0.9, at=2) for s in range(4)]
        [0.0, 0.0, 0.9, 0.9]
    """
    _check_fraction("sparsity", sparsity)
    return float(sparsity) if step >= at else 0.0


def at_init(step: int, *, sparsity: float) -> float:
    """Pruning at initialisation (SNIP): the full sparsity from step 0."""
    return one_shot(step, sparsity=sparsity, at=0)


def agp_cubic(step: int, *, final: float, start: int, n: int, frequency: int, initial: float = 0.0,
              power: int = 3) -> float:
    """Zhu & Gupta's gradual schedule ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3``.

    Evaluated on the pruning grid ``t0, t0 + Δt, ..., t0 + nΔt`` (held constant between grid points):
    ``initial`` before ``start``, ``final`` from ``start + n * frequency`` on.

    Example:
        >>> [round(agp_cubic(t, final=0.9, start=0, n=3, frequency=10), 4) for t in (0, 10, 20, 30, 99)]
        [0.0, 0.6333, 0.8667, 0.9, 0.9]
    """
    _check_fraction("final", final)
    _check_fraction("initial", initial)
    _check_int("start", start)
    _check_int("n", n, 1)
    _check_int("frequency", frequency, 1)
    if initial > final:
        raise ConfigError(f"initial={initial} > final={final}: AGP only increases sparsity")
    if step < start:
        return float(initial)
    k = min((step - start) // frequency, n)  # index on the pruning grid
    return float(final + (initial - final) * (1.0 - k / n) ** power)


def geometric_rounds(final: float, *, rounds: int | None = None, rate=None, sizes: dict | None = None) -> list:
    """The one round schedule of iterative pruning: the sparsity after each round, every round removing the
    same fraction of the weights that survived the previous one (Han et al. 2015; lottery tickets, Frankle &
    Carbin 2019; learning-rate rewinding, Renda et al. 2020).

    Give ``rounds`` (the per-round rate follows, the last round lands on ``final``) or ``rate`` (as many rounds
    as it takes; the last round is shortened to land on ``final`` exactly). ``rate`` may be per layer,
    ``{name: rate}`` with ``sizes={name: numel}``: each layer keeps ``(1 - rate_l) ** r`` after round ``r``,
    the rounds continue until the whole (size-weighted) reaches ``final``, and the last round is shortened for
    every layer alike (a fractional round found by bisection); the result is then one ``{name: sparsity}`` per
    round.

    Example:
        >>> [round(s, 3) for s in geometric_rounds(0.488, rate=0.2)]
        [0.2, 0.36, 0.488]
        >>> geometric_rounds(0.75, rounds=2)
        [0.5, 0.75]
        >>> [{k: round(v, 3) for k, v in r.items()} for r in
        ...  geometric_rounds(0.19, rate={"a": 0.2, "b": 0.1}, sizes={"a": 9, "b": 1})]
        [{'a': 0.2, 'b': 0.1}]
    """
    _check_fraction("final", final)
    if (rounds is None) == (rate is None):
        raise ConfigError(f"rounds={rounds!r}, rate={rate!r}: give exactly one (rounds, or the fraction of the "
                          f"survivors removed per round)")
    if rounds is not None:
        _check_int("rounds", rounds, 1)
        return [1.0 - (1.0 - final) ** ((r + 1) / rounds) for r in range(rounds - 1)] + [float(final)]
    per_layer = isinstance(rate, dict)
    rates = dict(rate) if per_layer else {"": rate}
    for name, p in rates.items():
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 < p < 1.0):
            raise ConfigError(f"rate{'[' + repr(name) + ']' if per_layer else ''}={p!r} must be a float in (0, 1) "
                              f"(fraction of the surviving weights removed per round), e.g. 0.2")
    if per_layer:
        if sizes is None or set(sizes) != set(rates):
            raise ConfigError(f"per-layer rates need sizes={{name: numel}} for the same layers; got "
                              f"{sorted(rates)} and {sorted(sizes or {})}")
    else:
        sizes = {"": 1}
    total = float(sum(sizes.values()))

    def kept(e: float) -> float:  # fraction of all weights kept after e rounds
        return sum(n * (1.0 - rates[k]) ** e for k, n in sizes.items()) / total

    def at(e: float) -> dict:
        return {k: 1.0 - (1.0 - p) ** e for k, p in rates.items()}

    if final <= 0.0:
        return [{k: 0.0 for k in rates}] if per_layer else [0.0]
    out, r = [], 1
    while 1.0 - kept(r) < final - 1e-12:  # whole rounds that stay below the target
        out.append(at(r))
        r += 1
    lo, hi = r - 1.0, float(r)  # the last round, shortened: the fractional e where the whole reaches final
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 1.0 - kept(mid) < final else (lo, mid)
    out.append(at(hi))
    return out if per_layer else [d[""] for d in out]


def dns_update_probability(step: int, *, gamma: float = 1e-4, power: float = 1.0, stop: int | None = None) -> float:
    """Probability that Dynamic Network Surgery updates its masks at ``step``: ``(1 + γ·step)^(-power)``,
    0 from ``stop`` on.

    Example:
        >>> dns_update_probability(0), dns_update_probability(10000), dns_update_probability(5, stop=5)
        (1.0, 0.5, 0.0)
    """
    if stop is not None and step >= stop:
        return 0.0
    return float((1.0 + gamma * step) ** (-power))


def lr_rewind_factor(step: int, *, lr_factor, total_steps: int, retrain_steps: int) -> float:
    """Learning-rate rewinding (Renda et al. 2020): retraining step ``step`` replays the original schedule
    ``lr_factor(s, total_steps)`` from ``s = total_steps - retrain_steps`` on.

    Example:
        >>> f = lambda s, T: 1.0 if s < T // 2 else 0.1
        >>> [lr_rewind_factor(s, lr_factor=f, total_steps=10, retrain_steps=6) for s in range(6)]
        [1.0, 0.1, 0.1, 0.1, 0.1, 0.1]
    """
    _check_int("total_steps", total_steps, 1)
    _check_int("retrain_steps", retrain_steps, 1)
    if retrain_steps > total_steps:
        raise ConfigError(f"retrain_steps={retrain_steps} > total_steps={total_steps}: learning-rate rewinding "
                          f"replays part of the original schedule; retrain for at most {total_steps} steps")
    return float(lr_factor(min(total_steps - retrain_steps + step, total_steps - 1), total_steps))
