"""The fault suite: bad input, faults and hostile clients, each case asserting the message (it names
the file or key and the problem), the exit status, and that no earlier output was lost or changed.

One module per family (its ``FAMILY`` names it in docs/faults.md, written by scripts/fault_table.py
from a real run). Plain ``pytest`` runs the fast part (CI); ``make test-faults`` sets
``RETINASEG_FAULTS=full`` for the full part: more kill points per pipeline stage, every stage of the
real three-model pipeline, more fuzz examples, a longer server load.
"""
