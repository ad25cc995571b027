"""Models: the store on disk, ONNX Runtime sessions, and one module per model family."""
