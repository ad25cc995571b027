# Sourced by scripts/serve, scripts/cvserve and scripts/test: the .venv they share.
# ensure_venv [EXTRA]: create .venv and `pip install -e .[EXTRA]` only when pyproject.toml
# changed since the last install (its hash is stamped in .venv), so a restart costs ~0 s.
ensure_venv() {
  local extra="${1:-}" stamp=".venv/.cvserve-install" hash had_hash="" had_extra=""
  [ -x .venv/bin/python ] || python3 -m venv .venv
  hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  [ -f "$stamp" ] && read -r had_hash had_extra < "$stamp" || true
  # The same pyproject.toml, and the extra asked for (or none: any install covers it).
  if [ "$had_hash" = "$hash" ] && { [ -z "$extra" ] || [ "$had_extra" = "$extra" ]; }; then
    return 0
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
  # trackers (the streams extra) requires opencv-python, whose cv2 files overwrite the
  # headless build's and need libGL: put the headless files back (same version).
  if .venv/bin/python -c "import importlib.metadata as m; m.version('opencv-python')" 2>/dev/null; then
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "opencv-python-headless==$(
      .venv/bin/python -c "import importlib.metadata as m; print(m.version('opencv-python-headless'))")"
  fi
  echo "$hash $extra" > "$stamp"
}
