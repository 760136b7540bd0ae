"""Property tests that show they reached what they are named for.

A hypothesis test passes just as well when its strategy never once produces the case the test is about
(a valid job, a push the fix changes): the assertions on that branch then never run. ``Branches`` names
the branch each example takes, with ``hypothesis.event()`` (so ``--hypothesis-show-statistics`` lists
them), and counts them; ``Branches.checked`` wraps the ``@given`` test so that, once hypothesis's whole
run has passed, the test fails unless each required branch was taken at least so many times::

    CASES = Branches(**{"valid job": 40})

    @CASES.checked
    @settings(max_examples=300)
    @given(jobs)
    def test_jobs(job):
        CASES.reached("valid job" if ... else "invalid job")

The minimum holds for the test's own run (not a later test reading a counter), so it holds under ``-k``,
in any order and alone. Set it well below what the strategy gives (a third or less of the usual count)
so that it never fails by chance, only when a change to the strategy or the code stops the branch.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import event


class Branches:
    """The branches one property test's examples took, and the least number of times each must be taken.

    A required name counts the labels equal to it and those under it: ``"refused"`` counts
    ``"refused: bucket"`` and ``"refused: prefix"`` too.
    """

    def __init__(self, **at_least: int):
        self.at_least = at_least
        self.counts: Counter[str] = Counter()

    def reached(self, label: str) -> str:
        """Record that this example took branch ``label`` (also as a hypothesis event); returns it."""
        event(label)
        self.counts[label] += 1
        return label

    def count(self, name: str) -> int:
        return sum(n for label, n in self.counts.items() if label == name or label.startswith(f"{name}: "))

    def checked(self, test: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a ``@given`` test (put it outermost): run it, then require the minimums.

        ``functools.wraps`` carries hypothesis's attributes over, so pytest and its hypothesis plugin still
        see a hypothesis test (fixtures, settings, ``--hypothesis-show-statistics``)."""
        if not getattr(test, "is_hypothesis_test", False):
            raise TypeError(f"{test.__name__}: Branches.checked goes outside @given")

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            self.counts.clear()
            test(*args, **kwargs)
            short = {name: self.count(name) for name, least in self.at_least.items() if self.count(name) < least}
            assert not short, (f"{test.__name__} reached too rarely {short} (at least {self.at_least}); "
                               f"all branches: {dict(self.counts.most_common())}")

        return run
