"""Sphinx configuration of circuitdag's API reference (built from the docstrings).

    .venv/bin/sphinx-build -W -b html docs/api runs/api-html     # then open runs/api-html/index.html

``tests/test_api_docs.py`` builds it with warnings as errors, so a docstring that breaks
the reference fails the test suite.
"""

project = "circuitdag"
author = "circuitdag developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Type hints name third-party classes (torch.Tensor, jaxtyping shapes, numpy arrays) that this
# reference does not document; they are shown as written, not linked.
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
html_theme = "alabaster"
html_title = "circuitdag API reference"
exclude_patterns = ["_build"]
