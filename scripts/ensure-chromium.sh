#!/bin/sh
# The dashboard's browser test drives Chromium. When it is missing, install Debian's
# chromium package (about 10 s here). Without apt-get, root or sudo, say why and carry
# on: that one test then skips, giving the same reason.
command -v chromium >/dev/null 2>&1 && exit 0
skip() { echo "note: $1: the dashboard's browser test will be skipped" >&2; exit 0; }
command -v apt-get >/dev/null 2>&1 || skip "Chromium is missing and there is no apt-get"
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    skip "Chromium is missing and installing it needs root or sudo"
fi
echo "installing Debian's chromium for the dashboard's browser test..." >&2
$as_root apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed"
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends \
    chromium >/dev/null 2>&1 || skip "apt-get could not install chromium"
