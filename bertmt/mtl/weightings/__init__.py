"""One module per loss weighting; importing this package registers them all (bertmt.mtl.loss_weighting)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
