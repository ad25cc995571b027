"""HTTP layer: routes parse parameters, call models, pick renderers. No pixel work here."""
