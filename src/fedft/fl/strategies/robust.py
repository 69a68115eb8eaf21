"""Byzantine-robust aggregation (after Flower's FedMedian, FedTrimmedAvg and Krum): coordinate-wise median,
trimmed mean, and (Multi-)Krum, which averages only the updates closest to their neighbours."""
from fedft.fl.aggregate import State, coordinate_median, krum_select, trimmed_mean, weighted_average
from fedft.fl.messages import Update
from fedft.fl.strategies.base import STRATEGIES, Strategy


class _Robust(Strategy):
    """Combines the updates that carry every parameter (and trained on data); none such: the state stays."""

    def aggregate(self, rnd: int, current: State, updates: list[Update]) -> State:
        kept = [u for u in updates if u.num_examples > 0 and u.state.keys() == current.keys()]
        return self.combine(kept) if kept else current

    def combine(self, updates: list[Update]) -> State:
        raise NotImplementedError


@STRATEGIES.register("median")
class FedMedian(_Robust):
    def combine(self, updates: list[Update]) -> State:
        return coordinate_median([u.state for u in updates])


@STRATEGIES.register("trimmed_mean")
class FedTrimmedAvg(_Robust):
    def combine(self, updates: list[Update]) -> State:
        if 2 * int(self.cfg.trim_beta * len(updates)) >= len(updates):  # too few updates to trim: plain median
            return coordinate_median([u.state for u in updates])
        return trimmed_mean([u.state for u in updates], self.cfg.trim_beta)


@STRATEGIES.register("krum")
class Krum(_Robust):
    def combine(self, updates: list[Update]) -> State:
        chosen = [updates[i] for i in krum_select([u.state for u in updates], self.cfg.krum_byzantine,
                                                  self.cfg.krum_keep)]
        return weighted_average([u.state for u in chosen], [u.num_examples for u in chosen])
