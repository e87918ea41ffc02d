"""The one verdict policy (``../shared/papers/VERDICTS.md``): a run's numbers in, one verdict and its reason out.

Every claim function of every paper calls these; none writes its own rule. Verdicts:

- ``not testable``: the run cannot speak to the claim: a random-weight smoke run, the claim's subject is
  absent (a named model, a private corpus), an absolute figure measured with stand-in models or data, or
  no compared system beats the null/format floor (nobody learned the task).
- ``inconclusive``: testable, but the CI straddles the decision point, the seeds disagree in sign, or the
  evidence is too thin for more (fewer than ``MIN_SEEDS`` seeds, or hyperparameters not chosen on dev).
- ``replicated``: the CI lies on the claimed side and, where the paper states a magnitude, contains it
  (absolute figures: the CI contains the paper's figure, under the paper's own model and data).
- ``direction only``: the CI lies on the claimed side but excludes the paper's magnitude, or the
  magnitude cannot be compared (stand-in models or data).
- ``not replicated``: the CI lies on the opposite side of the decision point, or inside a stated
  equivalence margin around it (the effect is shown to be absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ie_helpers.errors import IEError

REPLICATED, NOT_REPLICATED, DIRECTION_ONLY = "replicated", "not replicated", "direction only"
INCONCLUSIVE, NOT_TESTABLE = "inconclusive", "not testable"
VERDICTS = (REPLICATED, NOT_REPLICATED, DIRECTION_ONLY, INCONCLUSIVE, NOT_TESTABLE)
MIN_SEEDS = 3


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str


@dataclass(frozen=True)
class Evidence:
    """An effect with its CI (over seeds and items; ``level`` 0.95 unless a multiple-comparison adjustment
    widened it) and what stands behind it.

    ``seed_effects``: the effect in each seed alone (sign agreement); ``tuned_on_dev``: every compared
    system's hyperparameters were chosen on dev with the same budget; ``stand_in``: models or data stand
    in for the paper's, so only a direction can be compared.
    """
    effect: float
    lo: float
    hi: float
    seed_effects: Sequence[float] = ()
    tuned_on_dev: bool = False
    stand_in: bool = True
    level: float = 0.95

    def __post_init__(self):
        if not self.lo <= self.hi:
            raise IEError(f"CI [{self.lo}, {self.hi}] is not an interval: lo must not exceed hi")


def _gate(random_weights: bool, absent: str | None, floor_beaten: bool) -> Verdict | None:
    if random_weights:
        return Verdict(NOT_TESTABLE, "random-weight smoke run: it tests the code path, not the claim")
    if absent:
        return Verdict(NOT_TESTABLE, absent)
    if not floor_beaten:
        return Verdict(NOT_TESTABLE, "no compared system beats the null/format floor: nobody learned the task")
    return None


def _thin(ev: Evidence) -> str | None:
    """Why the evidence can reach at most `inconclusive`, or None."""
    n = len(ev.seed_effects)
    if n < MIN_SEEDS:
        return f"{n or 1} seed(s), fewer than {MIN_SEEDS}: at most inconclusive"
    if not ev.tuned_on_dev:
        return "hyperparameters not chosen on dev for every compared system: at most inconclusive"
    return None


def comparison(ev: Evidence, *, decision: float = 0.0, claimed: str = "above", magnitude: float | None = None,
               equivalence_margin: float | None = None, random_weights: bool = False, absent: str | None = None,
               floor_beaten: bool = True) -> Verdict:
    """A comparison or trend claim: is the effect on the ``claimed`` side ("above"/"below") of ``decision``?

    ``magnitude``: the paper's stated effect, if any; ``equivalence_margin``: |effect − decision| below
    which the effect counts as absent.
    """
    if claimed not in ("above", "below"):
        raise IEError(f"claimed={claimed!r}: use 'above' or 'below'")
    gated = _gate(random_weights, absent, floor_beaten)
    if gated:
        return gated
    sign = 1.0 if claimed == "above" else -1.0
    lo, hi = sorted((sign * (ev.lo - decision), sign * (ev.hi - decision)))  # claimed side is now > 0
    ci = f"effect {ev.effect:+.3g} [{_level(ev)} CI {ev.lo:+.3g}, {ev.hi:+.3g}] vs decision point {decision:g}"
    if lo > 0:
        raw = _on_claimed_side(ev, magnitude, ci)
    elif equivalence_margin is not None and -equivalence_margin < lo and hi < equivalence_margin:
        raw = Verdict(NOT_REPLICATED, f"{ci}: inside the equivalence margin ±{equivalence_margin:g}, no effect")
    elif hi < 0:
        raw = Verdict(NOT_REPLICATED, f"{ci}: on the opposite side")
    else:
        return Verdict(INCONCLUSIVE, f"{ci}: the CI straddles the decision point")
    signs = {(s - decision) > 0 for s in ev.seed_effects if s != decision}
    if len(signs) > 1:
        return Verdict(INCONCLUSIVE, f"{ci}, but the seeds disagree in sign ({_seeds(ev)})")
    thin = _thin(ev)
    if thin:
        return Verdict(INCONCLUSIVE, f"{ci}; would be '{raw.verdict}', but {thin}")
    return raw


def all_of(parts: Sequence[Verdict]) -> str:
    """The verdict of a claim that holds only if each of its comparisons does (``a > b > c``): not replicated if
    any part is, replicated if every part is, direction only if every part is on the claimed side, else
    inconclusive (``not testable`` only when every part is)."""
    found = {p.verdict for p in parts}
    if not found or found == {NOT_TESTABLE}:
        return NOT_TESTABLE
    if NOT_REPLICATED in found:
        return NOT_REPLICATED
    if found == {REPLICATED}:
        return REPLICATED
    if found <= {DIRECTION_ONLY, REPLICATED}:
        return DIRECTION_ONLY
    return INCONCLUSIVE


def _on_claimed_side(ev: Evidence, magnitude: float | None, ci: str) -> Verdict:
    if ev.stand_in:
        return Verdict(DIRECTION_ONLY, f"{ci}: on the claimed side; stand-in models or data, so the paper's "
                                       "magnitude is not compared")
    if magnitude is None:
        return Verdict(REPLICATED, f"{ci}: on the claimed side")
    if ev.lo <= magnitude <= ev.hi:
        return Verdict(REPLICATED, f"{ci}: on the claimed side and contains the paper's {magnitude:g}")
    return Verdict(DIRECTION_ONLY, f"{ci}: on the claimed side but excludes the paper's {magnitude:g}")


def absolute(point: float, lo: float, hi: float, paper_value: float, *, own_model_and_data: bool,
             random_weights: bool = False, absent: str | None = None) -> Verdict:
    """An absolute figure (an F1, a parse rate): comparable only under the paper's own model and data."""
    gated = _gate(random_weights, absent, True)
    if gated:
        return gated
    ci = f"{point:.3g} [95% CI {lo:.3g}, {hi:.3g}] vs the paper's {paper_value:g}"
    if not own_model_and_data:
        return Verdict(NOT_TESTABLE, f"{ci}: measured with stand-in models or data, shown for reference")
    if lo <= paper_value <= hi:
        return Verdict(REPLICATED, f"{ci}: the CI contains the paper's figure")
    return Verdict(NOT_REPLICATED, f"{ci}: the CI excludes the paper's figure")


def null_result(ev: Evidence, *, decision: float = 0.0, random_weights: bool = False, absent: str | None = None,
                floor_beaten: bool = True) -> Verdict:
    """A claim that an effect is *not* significant: replicated while the CI contains the decision point."""
    gated = _gate(random_weights, absent, floor_beaten)
    if gated:
        return gated
    ci = f"effect {ev.effect:+.3g} [{_level(ev)} CI {ev.lo:+.3g}, {ev.hi:+.3g}]"
    if ev.lo <= decision <= ev.hi:
        raw = Verdict(REPLICATED, f"{ci} contains {decision:g}: not significant, as claimed")
    else:
        raw = Verdict(NOT_REPLICATED, f"{ci} excludes {decision:g}: a significant effect")
    thin = _thin(ev)
    return Verdict(INCONCLUSIVE, f"{ci}; would be '{raw.verdict}', but {thin}") if thin else raw


def existence(count: int, claimed: int, *, random_weights: bool = False, absent: str | None = None) -> Verdict:
    """A claim about a count (e.g. zero parseable outputs)."""
    gated = _gate(random_weights, absent, True)
    if gated:
        return gated
    if count == claimed:
        return Verdict(REPLICATED, f"count {count}, as claimed")
    return Verdict(NOT_REPLICATED, f"count {count}, the paper says {claimed}")


def _level(ev: Evidence) -> str:
    """'95%' or, for an adjusted interval, its level to the digit that matters ('98.3%')."""
    return f"{100 * ev.level:.3g}%"


def _seeds(ev: Evidence) -> str:
    return ", ".join(f"{s:+.3g}" for s in ev.seed_effects)


def at_most_inconclusive(verdict: str, *, n_seeds: int, tuned_on_dev: bool) -> Verdict:
    """A comparison verdict reached by a claim's own rule, held to the evidence rule: fewer than ``MIN_SEEDS``
    seeds, or hyperparameters not chosen on dev, make any decided verdict ``inconclusive``."""
    if verdict not in VERDICTS:
        raise IEError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if verdict in (INCONCLUSIVE, NOT_TESTABLE):
        return Verdict(verdict, "")
    if n_seeds < MIN_SEEDS:
        return Verdict(INCONCLUSIVE, f"would be '{verdict}', but {n_seeds} seed(s) < {MIN_SEEDS}")
    if not tuned_on_dev:
        return Verdict(INCONCLUSIVE, f"would be '{verdict}', but the hyperparameters were not chosen on dev")
    return Verdict(verdict, "")


def hold_to_policy(claims: list, *, comparisons: set[str], n_seeds: int, tuned_on_dev: bool,
                   random_weights: bool = False) -> list:
    """Claims (dataclasses with ``claim_id``, ``verdict``, ``note``) after the policy's run-wide rules: a
    random-weight run makes every claim not testable; each comparison claim in ``comparisons`` is held to
    the evidence rule (``at_most_inconclusive``), its note saying why when that changed it."""
    import dataclasses

    out = []
    for claim in claims:
        if random_weights:
            claim = dataclasses.replace(claim, verdict=NOT_TESTABLE,
                                        note="random-weight smoke run: it tests the code path, not the claim")
        elif claim.claim_id in comparisons:
            held = at_most_inconclusive(claim.verdict, n_seeds=n_seeds, tuned_on_dev=tuned_on_dev)
            if held.verdict != claim.verdict:
                note = claim.note.rstrip()
                note = f"{note}{'' if not note or note.endswith('.') else '.'} Policy: {held.reason}.".lstrip()
                claim = dataclasses.replace(claim, verdict=held.verdict, note=note)
        out.append(claim)
    return out
