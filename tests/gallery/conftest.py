"""The gallery of Pyro's own models runs with ``make gallery`` (``PYROVI_GALLERY=1``).

It is not yet part of ``make test``: its run time has not been measured on a quiet machine
(the whole gallery took tens of minutes on the shared, loaded 2-core machine it was written
on), and several of its strict xfails mark export bugs that were fixed in parallel, so its
expectations must be re-read before CI runs it.
"""

import os

collect_ignore_glob = [] if os.environ.get("PYROVI_GALLERY") else ["test_*.py"]
