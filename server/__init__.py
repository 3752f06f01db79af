"""Inference server: FastAPI app, detection + classification pipeline, model loading."""
