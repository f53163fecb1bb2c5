"""cmkd: cross-modal knowledge distillation for fine-grained one-shot classification."""

__version__ = "0.1.0"
