"""Server strategies: how the server turns client updates into the next global state."""
from fedft.fl.strategies.base import STRATEGIES, Strategy  # noqa: F401
from fedft.fl.strategies import fedadam, fedavg, fedavgm, robust  # noqa: F401  (registration)
