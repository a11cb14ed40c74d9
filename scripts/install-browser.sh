#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver when missing: the browser test of
# `mvq explore` (tests/test_explore_browser.py) drives them through selenium.
# Never fails the build: without them that one test skips and says why.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "browser: chromium and chromedriver found"; exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser: installing chromium and chromium-driver with apt-get ..."
  if (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }); then
    echo "browser: chromium installed"; exit 0
  fi
  echo "browser: WARNING: apt-get could not install chromium and chromium-driver."
else
  echo "browser: WARNING: chromium / chromedriver are missing and this is not a root shell with apt-get."
fi
echo "browser: install them with 'sudo apt-get install chromium chromium-driver'; until then"
echo "browser: the browser test of mvq explore is skipped (the rest of the suite runs)."
exit 0
