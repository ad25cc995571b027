"""Wire formats, one module each with both directions: the server's encoder and the
client's decoder."""
