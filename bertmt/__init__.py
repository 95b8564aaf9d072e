"""bertmt: distributed multitask BERT training on the DeepSpeed engine."""

__version__ = "0.1.0"
