"""The command-line programs: one module per script, each with a ``main`` that parses its flags and calls the
library (``main`` is also the console entry point, ``sa-<name>``), and the flags they share (``flags``), generated
from the config dataclasses."""
