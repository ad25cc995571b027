"""Wire formats, each in one module holding both directions: the server's encoder and the
client's decoder. Kept free of server-only imports (no onnxruntime, no fastapi): the SDK uses it.
"""
