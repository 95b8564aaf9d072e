"""Multitask optimisation: gradient-surgery methods as functions of the task-gradient Gram matrix."""

from bertmt.mtl.gram import METHODS, GradVac, Method, PCGrad, Sum, make_method

__all__ = ["METHODS", "GradVac", "Method", "PCGrad", "Sum", "make_method"]
