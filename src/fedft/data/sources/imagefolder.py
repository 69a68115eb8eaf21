"""imagefolder:PATH: one sub-folder of images per class."""
from fedft.data.sources.base import Loaded, source


@source("imagefolder", "image", "a folder with one sub-folder of images per class", prefix=True)
def load(path: str, cfg) -> Loaded:
    from fedft.data import images

    return Loaded(*images.load_image_folder(path, cfg.test_fraction))
