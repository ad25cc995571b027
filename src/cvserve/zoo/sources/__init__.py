"""One module per source package: `build(ctx, folder) -> Manifest` writes the model files
into `folder`; `check(ctx, folder, manifest)` runs the staged model on a known photo."""
