"""PartitionedIndex: partitions + compressed codes + exact re-ranking (the ScaNN pipeline).

    settings.py   PartitionSettings (how it is built) and SearchSettings (how it searches)
    training.py   k-means / AVQ centres, projection, codecs, probe calibration; row assignment
    pages.py      PagedLists: per-partition rows in fixed-size pages
    storage.py    Entries: every row's copies in the pages, and where they sit
    scan.py       the search: partition choice, batched page products, candidates, re-ranking
    persist.py    the saved format "peakknn.partitioned"
    index.py      the public class
"""

from .index import PartitionedIndex
from .settings import PartitionSettings, SearchSettings

__all__ = ["PartitionSettings", "PartitionedIndex", "SearchSettings"]
