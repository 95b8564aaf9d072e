"""One module per gradient-surgery method; importing this package registers them all (bertmt.mtl.method)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
