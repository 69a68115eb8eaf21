"""fashion-mnist: Zalando's 28x28 clothing images (Debian's dataset-fashion-mnist)."""
from fedft.data.sources.base import Loaded, source


@source("fashion-mnist", "image", "Fashion-MNIST, 10 classes (Debian dataset-fashion-mnist)")
def load(_: str, cfg) -> Loaded:
    from fedft.data import images

    return Loaded(*images.load_fashion_mnist(cfg))
