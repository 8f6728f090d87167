"""Multimodal search: embed a collection into a FAISS index on disk and query it.

* :func:`build_index` (``bridgetower index``): a folder of images, a JSONL/CSV of
  image-caption pairs or WebDataset shards -> an index directory, resumable if killed;
* :class:`SearchIndex`, :func:`search` (``bridgetower search``): top-k hits of a text or an
  image, optionally re-ranked by the ITM head; :func:`contact_sheet` draws them;
* :func:`export_arrays`: the index as plain arrays for a vector database;
* :func:`build_faiss_index`: flat inner product up to ``FLAT_THRESHOLD`` vectors, IVF/PQ above.

``faiss`` comes with the ``search`` extra (``pip install 'bridgetower[search]'``).
"""

from __future__ import annotations

from .index import FLAT_THRESHOLD, SearchIndex, build_faiss_index, build_index, export_arrays
from .query import Hit, contact_sheet, embed_queries, search
from .sources import Record, iter_records, load_record_image

__all__ = [
    "FLAT_THRESHOLD",
    "Hit",
    "Record",
    "SearchIndex",
    "build_faiss_index",
    "build_index",
    "contact_sheet",
    "embed_queries",
    "export_arrays",
    "iter_records",
    "load_record_image",
    "search",
]
