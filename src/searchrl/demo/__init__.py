"""A web page to look at searchrl working: the search agent live, and BM25 with vs without expansions.

``searchrl demo --data DIR`` serves it (see :mod:`searchrl.demo.app`).
"""

from searchrl.demo.app import Demo, create_app

__all__ = ["Demo", "create_app"]
