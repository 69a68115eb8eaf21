"""digits: scikit-learn's 8x8 handwritten digits."""
from fedft.data.sources.base import Loaded, source


@source("digits", "image", "scikit-learn's 8x8 digits, 10 classes")
def load(_: str, cfg) -> Loaded:
    from fedft.data import images

    return Loaded(*images.load_digits(cfg))
