"""Haven agent: one per host; executes the console's commands and reports back.

The console may import only `agent.protocol` from this package (see its docstring for the wire
contract). Nothing here imports Django or the console.
"""

__version__ = "0.1.0"
