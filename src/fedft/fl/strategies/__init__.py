"""Server strategies: what each sampled client receives, and how the server turns their updates into the next
global state. One file per strategy, registered and discovered."""
from fedft.fl.strategies.base import STRATEGIES, Strategy  # noqa: F401
from fedft.registry import discover

discover(__name__)
