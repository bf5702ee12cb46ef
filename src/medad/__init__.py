"""medad: anomaly detection in medical images by knowledge distillation."""

__version__ = "0.1.0"
