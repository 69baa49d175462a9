"""The package version, in one place: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``),
``dmcourse.__version__`` and the roofline records (chapter 5) report it."""

__version__ = "0.1.0"
