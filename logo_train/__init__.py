"""logo-train: vehicle-logo classifiers on imbalanced, partly mislabelled data, on Ray."""

__version__ = "0.1.0"
