"""Candidate racing: which prompts may stop being scored, decided by an anytime-valid test.

A step's candidates are scored on the same dev samples in one fixed, shuffled order. After every
sample that all surviving candidates have answered, each ordered pair (a, b) of survivors is
tested: "is b's full-dev score more than epsilon below a's?". A candidate for which some survivor
says yes stops being scored. The race ends when one candidate is left or the samples run out;
the caller then scores the chosen candidate on every remaining sample, so its dev score means
what it always meant.

The test (one per ordered pair, all run together)
-------------------------------------------------
Population: the N dev samples. For candidates a and b with scores s_a, s_b in [0, 1] on sample j,
let x_j = (s_a,j - s_b,j + 1) / 2 in [0, 1]; its population mean is m = (1 + D) / 2 where
D = mean_a - mean_b is the difference of the two full-dev scores. The samples are visited in a
uniformly random order, i.e. sampled WITHOUT replacement, so given the first t - 1 values (sum
S_{t-1}) the next one has conditional mean

    mu_t(m) = (N m - S_{t-1}) / (N - t + 1).

Null hypothesis H0: D <= epsilon, i.e. m <= m0 = (1 + epsilon) / 2 ("b may be within epsilon of
a"). The capital process of a bettor who stakes lambda_t >= 0 on x_t exceeding mu_t(m0),

    K_t = prod_{i <= t} (1 + lambda_i (x_i - mu_i(m0))),   0 <= lambda_i < 1 / mu_i(m0),

is a non-negative supermartingale under H0 (under any m <= m0, E[x_i | past] = mu_i(m) <=
mu_i(m0)), so by Ville's inequality P(exists t: K_t >= 1/alpha) <= alpha: the test may be looked
at after every sample, as often as we like, with no correction for the looks (Waudby-Smith and
Ramdas, "Confidence sequences for sampling without replacement", NeurIPS 2020). The bet is their
predictable plug-in, using the variance of the values seen before sample t:

    sigma2_{t-1} = (1/4 + sum_{i<t} (x_i - xbar_i)^2) / t,
    lambda_t = min( sqrt(2 log(1/alpha) / (sigma2_{t-1} t log(t + 1))), c / mu_t(m0) ),  c = 3/4.

If S_{t-1} > N m0 the null is already impossible (b cannot catch up even by winning every sample
left) and the pair is decided without a bet.

Error rate. Every ordered pair is tested at alpha = delta / (K - 1). Racing can only go wrong by
dropping the best candidate, and only the K - 1 pairs (a, best) can do that, each with a true null
(nothing is better than the best by more than epsilon): by the union bound the best survives with
probability at least 1 - delta, is scored on every sample like every other survivor, and is chosen
(or one within epsilon of it, when several survivors' full-dev scores are that close). This holds
whatever the number of looks, so the round size is free to be chosen for throughput alone.

The race ends when one candidate is left or every sample is answered; survivors at the end have
full-dev scores and are compared exactly, as without racing.

Scores that failed (NaN) are not values of the population: a sample one of the pair failed on is
skipped for that pair, which assumes failures do not depend on the order. Continuous scores
(ROUGE-L) are in [0, 1] and need nothing else.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

BET_CAP = 0.75


@dataclass(frozen=True, slots=True)
class RacingSettings:
    """The racing knobs: error rate, indifference zone, samples per round, order seed."""

    delta: float = 0.05
    epsilon: float | None = None  # None: one sample's worth, 1 / N
    round_size: int = 4
    seed: int = 0

    def epsilon_for(self, sample_count: int) -> float:
        if self.epsilon is not None:
            return self.epsilon
        return 1.0 / max(1, sample_count)


@dataclass(slots=True)
class BettingTest:
    """One one-sided without-replacement betting test of H0: population mean <= m0 (or >=)."""

    population: int
    null_mean: float
    alpha: float
    upward: bool = True  # True: reject when the mean is above null_mean; False: below
    seen: int = 0
    total: float = 0.0
    squares: float = 0.25
    running_mean: float = 0.5
    log_capital: float = 0.0
    rejected: bool = False

    def update(self, value: float) -> bool:
        """Add one value; True once H0 is rejected (and forever after)."""
        if self.rejected or self.seen >= self.population:
            return self.rejected
        x = value if self.upward else 1.0 - value
        null_total = self.population * (self.null_mean if self.upward else 1.0 - self.null_mean)
        left = self.population - self.seen
        conditional = (null_total - self._oriented_total()) / left
        t = self.seen + 1
        if 0.0 <= conditional < 1.0:
            variance = self.squares / t
            bet = math.sqrt(2.0 * math.log(1.0 / self.alpha) / (variance * t * math.log(t + 1.0)))
            bet = min(bet, BET_CAP / conditional) if conditional > 0.0 else bet
            self.log_capital += math.log1p(bet * (x - conditional))
            self.rejected = self.log_capital >= math.log(1.0 / self.alpha)
        self.seen = t
        self.total += value
        self.squares += (x - self.running_mean) ** 2
        self.running_mean = (self.running_mean * t + x) / (t + 1)
        if self._oriented_total() > null_total + 1e-9:
            self.rejected = True  # the values seen already exceed all the null allows
        return self.rejected

    def _oriented_total(self) -> float:
        return self.total if self.upward else self.seen - self.total


@dataclass(slots=True)
class Race:
    """The state of one race of `candidates` prompts over `samples` dev samples, fed in order.

    Feed each candidate's score on the sample at each position of the racing order with
    `record(candidate, position, score)` (in any order of arrival); `survivors` and `finished`
    reflect every position that all survivors have answered.
    """

    candidates: int
    samples: int
    settings: RacingSettings = field(default_factory=RacingSettings)
    scores: list[list[float | None]] = field(init=False)
    alive: list[bool] = field(init=False)
    dropped_at: dict[int, int] = field(init=False, default_factory=dict)
    tests: dict[tuple[int, int], BettingTest] = field(init=False, default_factory=dict)
    decided_prefix: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.scores = [[None] * self.samples for _ in range(self.candidates)]
        self.alive = [True] * self.candidates
        alpha = self.settings.delta / max(1, self.candidates - 1)
        null_mean = (1.0 + self.settings.epsilon_for(self.samples)) / 2.0
        for a in range(self.candidates):
            for b in range(self.candidates):
                if a != b:
                    self.tests[(a, b)] = BettingTest(self.samples, null_mean, alpha)

    def record(self, candidate: int, position: int, score: float) -> None:
        """The score (NaN for a failed chain) of `candidate` at racing-order `position`."""
        self.scores[candidate][position] = score
        self._advance()

    def _advance(self) -> None:
        while self.decided_prefix < self.samples and not self.finished:
            position = self.decided_prefix
            survivors = self.survivors()
            if any(self.scores[c][position] is None for c in survivors):
                return
            for a in survivors:
                for b in survivors:
                    if a != b:
                        self._feed(a, b, position)
            self.decided_prefix += 1
            self._drop_losers(position + 1)

    def _feed(self, a: int, b: int, position: int) -> None:
        score_a, score_b = self.scores[a][position], self.scores[b][position]
        if not (_answered(score_a) and _answered(score_b)):
            return
        self.tests[(a, b)].update((score_a - score_b + 1.0) / 2.0)

    def _drop_losers(self, answered: int) -> None:
        if answered >= self.samples:
            return  # every survivor has its full-dev score now: nothing is saved by dropping
        survivors = self.survivors()
        losers = {b for a in survivors for b in survivors if a != b and self.tests[(a, b)].rejected}
        for loser in losers:
            self.alive[loser] = False
            self.dropped_at[loser] = answered

    def survivors(self) -> list[int]:
        return [c for c in range(self.candidates) if self.alive[c]]

    def partial_mean(self, candidate: int) -> tuple[float, int]:
        """Mean score over the samples answered so far, and how many there were."""
        values = [s for s in self.scores[candidate] if _answered(s)]
        return (sum(values) / len(values) if values else 0.0), len(values)

    def leader(self) -> int:
        """The survivor with the best mean on the samples every survivor has answered."""
        prefix = self.decided_prefix
        survivors = self.survivors()

        def prefix_mean(candidate: int) -> float:
            values = [
                s for s in self.scores[candidate][:prefix] if s is not None and not math.isnan(s)
            ]
            return sum(values) / len(values) if values else 0.0

        return max(survivors, key=lambda c: (prefix_mean(c), -c))

    def full_scores_needed(self) -> list[int]:
        """Candidates still to be scored on every remaining sample: the survivors, or the chosen
        one once the race is over."""
        return [self.leader()] if self.finished and self.survivors() else self.survivors()

    @property
    def finished(self) -> bool:
        """One survivor left, or every sample answered by every survivor."""
        return len(self.survivors()) <= 1 or self.decided_prefix >= self.samples


def _answered(score: float | None) -> bool:
    return score is not None and not math.isnan(score)


def racing_order(sample_count: int, seed: int) -> list[int]:
    """The fixed shuffled order of sample indices the race visits (seeded, reproducible)."""
    order = list(range(sample_count))
    random.Random(seed).shuffle(order)
    return order
