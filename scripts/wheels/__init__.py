"""The tools behind scripts/build_wheels.py, one job per module.

* ``matrix``: entries, the ``all`` / ``ci`` selectors, torch versions on the index, exact pip
  requirements, architecture lists.
* ``envs``: interpreters, what an environment's torch is, the cache of one environment per torch,
  and the fresh smoke-test environments layered over it.
* ``build``: one entry's ``pip wheel`` through setup.py, with the settings its torch calls for.
* ``checks``: post-build checks of a wheel file.
* ``pages``: the find-links pages, one per (torch, CUDA) pair, and their index.
* ``smoke`` / ``smoke_inside``: the smoke test, outside and inside its environment.
* ``pipeline``: one ``build`` run over a matrix, with its summary; ``cli``: the command line.
* ``common``: the source root, logging, commands, setup.py's own functions.
"""
