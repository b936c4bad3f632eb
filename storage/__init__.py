"""LMDB storage of overlay records (filled in by the storage issue)."""
