"""splitdnn: split inference for image classifiers with head network distillation.

Importing the package imports nothing heavy (no torch, no onnxruntime): a device that only
serves needs the core and the ``serve`` extra. The layers of the library are listed in the
README ("Where things are") and kept by the import contract in ``pyproject.toml``.
"""

__version__ = "0.2.0"
