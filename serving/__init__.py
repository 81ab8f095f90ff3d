"""Serving tfbrain SavedModels: export layout, a local PredictionService server, a gRPC client."""
