"""Byzantine-robust aggregation (after Flower's FedMedian, FedTrimmedAvg and Krum): coordinate-wise median,
trimmed mean, and (Multi-)Krum, which averages only the updates closest to their neighbours."""
from fedft.fl.aggregate import State, coordinate_median, krum_select, trimmed_mean, weighted_average
from fedft.fl.client import Update
from fedft.fl.strategies.base import STRATEGIES, Strategy


def _full(current: State, updates: list[Update]) -> list[Update]:
    return [u for u in updates if u.num_examples > 0 and u.state.keys() == current.keys()]


@STRATEGIES.register("median")
class FedMedian(Strategy):
    def aggregate(self, current: State, updates: list[Update]) -> State:
        kept = _full(current, updates)
        return coordinate_median([u.state for u in kept]) if kept else current


@STRATEGIES.register("trimmed_mean")
class FedTrimmedAvg(Strategy):
    def aggregate(self, current: State, updates: list[Update]) -> State:
        kept = _full(current, updates)
        if not kept:
            return current
        if 2 * int(self.cfg.trim_beta * len(kept)) >= len(kept):  # too few updates to trim: plain median
            return coordinate_median([u.state for u in kept])
        return trimmed_mean([u.state for u in kept], self.cfg.trim_beta)


@STRATEGIES.register("krum")
class Krum(Strategy):
    def aggregate(self, current: State, updates: list[Update]) -> State:
        kept = _full(current, updates)
        if not kept:
            return current
        chosen = [kept[i] for i in krum_select([u.state for u in kept], self.cfg.krum_byzantine, self.cfg.krum_keep)]
        return weighted_average([u.state for u in chosen], [u.num_examples for u in chosen])
