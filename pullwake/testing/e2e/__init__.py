"""A whole deployment as real processes, broken on purpose, and judged: the fault matrix.

- :mod:`~pullwake.testing.e2e.cluster`: :class:`~pullwake.testing.e2e.cluster.Cluster` starts
  servers, a fault gateway per server, runner processes and a producer that appends each
  message exactly once, then waits for quiescence and returns a verdict.
- :mod:`~pullwake.testing.e2e.ledger`: the handler the runner processes run, which records
  every claim durably, and the accounting of lost and duplicated messages.
- :mod:`~pullwake.testing.e2e.faults`: the fault catalogue and one matrix case.
- :mod:`~pullwake.testing.e2e.chaos`: the chaos soak (random faults from the matrix).

``tests/e2e`` runs these at small scale; ``bench/reliability.py`` (``make faults``, ``make
soak``) at full scale, writing docs/reliability.md's table. Import the modules themselves:
this package's face imports nothing, so ``import pullwake.testing`` stays light.
"""
