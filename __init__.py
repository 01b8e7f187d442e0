"""zonegate: store-and-forward transfer agents between isolated network zones.

The repository root is this package; see DESIGN in the README for the layering of its folders.
"""

__version__ = "0.1.0"
