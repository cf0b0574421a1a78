"""The data stage: loaders into one schema, validation with rejects, KAR's time split, demo data.

See docs/data.md for the formats, the fatal-vs-rejected rules and the split protocol.
"""

from .demo import DemoWorld, load_demo, simulate_demo, write_demo_dataset
from .fetch import DATASETS, fetch_dataset
from .movielens import detect_variant, load_movielens
from .schema import Dataset, Split
from .split import make_time_split
from .tables import ColumnMapping, load_table_dataset, read_table, split_title

__all__ = [
    "DATASETS",
    "ColumnMapping",
    "Dataset",
    "DemoWorld",
    "Split",
    "detect_variant",
    "fetch_dataset",
    "load_demo",
    "load_movielens",
    "load_table_dataset",
    "make_time_split",
    "read_table",
    "simulate_demo",
    "split_title",
    "write_demo_dataset",
]
