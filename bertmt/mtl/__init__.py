"""Multitask optimisation: gradient-surgery methods as functions of the task-gradient Gram matrix
(method.py, methods/), loss weightings (loss_weighting.py, weightings/), SMART (smart.py)."""

import bertmt.mtl.methods  # noqa: F401  (registers every method)
import bertmt.mtl.weightings  # noqa: F401  (registers every loss weighting)
from bertmt.mtl.loss_weighting import WEIGHTINGS, LossWeighting, make_weighting
from bertmt.mtl.method import METHODS, Method, make_method

__all__ = ["METHODS", "WEIGHTINGS", "LossWeighting", "Method", "make_method", "make_weighting"]
