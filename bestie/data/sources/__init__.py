"""Dataset sources: each reads one on-disk format for the ``prepare`` stage (see ``base``).

A third format is one module with a :class:`~bestie.data.sources.base.DatasetSource` class
and one line here (and its name in ``bestie.config.DATA_FORMATS``, which a test keeps equal).
"""

from bestie.data.sources.base import DatasetSource, SourceImage
from bestie.data.sources.coco import CocoSource
from bestie.data.sources.voc import VOCSource

__all__ = ["SOURCES", "DatasetSource", "SourceImage"]

SOURCES: dict[str, type[DatasetSource]] = {"voc": VOCSource, "coco": CocoSource}
