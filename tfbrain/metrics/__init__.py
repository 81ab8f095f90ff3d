"""Family-free metrics that models (Task defaults) and training both use."""
