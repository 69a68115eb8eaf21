"""wordnet-nouns: WordNet noun glosses labelled with their lexicographer category (Debian's wordnet-base)."""
from fedft.data.sources.base import Loaded, source


@source("wordnet-nouns", "text", "WordNet noun glosses -> 15 categories (Debian wordnet-base)")
def load(_: str, cfg) -> Loaded:
    from fedft.data import wordnet

    return Loaded(*wordnet.load(cfg))
