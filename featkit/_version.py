"""featkit's version (its own module, so the library never imports the package facade for it)."""

__version__ = "0.2.0"
