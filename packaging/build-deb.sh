#!/usr/bin/env bash
# Builds dist/msg-nagios-bridge_<version>_all.deb from this checkout with plain dpkg-deb
# (no debhelper): a staged tree + DEBIAN/ control files. See docs/packaging.md.
#
#   bash packaging/build-deb.sh [OUTDIR]        (default OUTDIR: ./dist)
#
# Needs only coreutils, gzip, sed, find and dpkg-deb; runs as any user (files are owned
# by root in the package through --root-owner-group). Prints the path of the .deb.
# Environment: DEB_MAINTAINER overrides the Maintainer field; SOURCE_DATE_EPOCH the time
# stamps (default: the last commit's time, else now), so a rebuild is byte-identical.
set -euo pipefail
umask 022
export LC_ALL=C

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
outdir=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
package=msg-nagios-bridge
maintainer=${DEB_MAINTAINER:-"msg-nagios-bridge maintainers <maintainers@users.noreply.b-seed-295e8c20.example>"}

die() { echo "build-deb: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

# --- version: pyproject.toml is the truth; the code's __version__ must agree ---------------------
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | sed -n 1p)
[ -n "$version" ] || die "no version in pyproject.toml"
code_version=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' msg_nagios_bridge/__init__.py)
[ "$version" = "$code_version" ] || \
  die "pyproject.toml says $version but msg_nagios_bridge/__init__.py says $code_version"
# Debian versions allow [A-Za-z0-9.+~-]; PEP 440 pre-releases (0.2.0rc1) sort before the
# release only when written 0.2.0~rc1.
deb_version=$(printf '%s' "$version" | sed -E 's/^([0-9.]+)(a|b|rc|\.dev)([0-9]+)$/\1~\2\3/')
printf '%s' "$deb_version" | grep -Eq '^[0-9][A-Za-z0-9.+~]*$' || die "cannot make a Debian version of '$version'"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

stage=$(mktemp -d "${TMPDIR:-/tmp}/$package-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root"

# --- the Python package: the .py files and the JSON Schema (no caches, no egg-info) -----------
site="$root/usr/lib/python3/dist-packages"
while IFS= read -r -d '' file; do
  install -D -m 0644 "$file" "$site/$file"
done < <(find msg_nagios_bridge \( -name '*.py' -o -name '*.schema.json' \) -not -path '*/__pycache__/*' -print0 | sort -z)
[ -f "$site/msg_nagios_bridge/__main__.py" ] || die "msg_nagios_bridge/__main__.py missing"

# A syntax check with the interpreter the package runs on, when it is here (no files written).
if [ -x /usr/bin/python3 ]; then
  /usr/bin/python3 - "$site" <<'PY' || die "the package does not compile with /usr/bin/python3"
import pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
PY
fi

# --- launcher, systemd unit, tmpfiles.d entry, config, docs -----------------------------------
install -D -m 0755 packaging/msg-nagios-bridge "$root/usr/bin/msg-nagios-bridge"
install -D -m 0644 systemd/msg-nagios-bridge.service "$root/lib/systemd/system/msg-nagios-bridge.service"
install -D -m 0644 systemd/msg-nagios-bridge-ocsp.socket "$root/lib/systemd/system/msg-nagios-bridge-ocsp.socket"
install -D -m 0644 systemd/msg-nagios-bridge.tmpfiles "$root/usr/lib/tmpfiles.d/msg-nagios-bridge.conf"
# 0640 here; the postinst gives it to group nagios (dpkg-statoverride) once that group exists.
install -D -m 0640 etc/msg-nagios-bridge.yaml "$root/etc/msg-nagios-bridge/bridge.yaml"

doc="$root/usr/share/doc/$package"
first_year=$(git -C "$repo" log --reverse --format=%cd --date=format:%Y 2>/dev/null | sed -n 1p || true)
last_year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
years=${first_year:-$last_year}
[ "$years" = "$last_year" ] || years="$years-$last_year"
install -d -m 0755 "$doc"
sed "s|@YEARS@|$years|" packaging/copyright > "$doc/copyright"
chmod 0644 "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
for page in docs/*.md; do
  install -m 0644 "$page" "$doc/$(basename "$page")"
done
date_r=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf '%s (%s) unstable; urgency=medium\n\n  * Built from the repository; its history lists the changes.\n\n -- %s  %s\n' \
  "$package" "$deb_version" "$maintainer" "$date_r" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
install -d -m 0755 "$root/usr/share/man/man8"
gzip -9n < packaging/msg-nagios-bridge.8 > "$root/usr/share/man/man8/msg-nagios-bridge.8.gz"
chmod 0644 "$root/usr/share/man/man8/msg-nagios-bridge.8.gz"
install -D -m 0644 packaging/lintian-overrides "$root/usr/share/lintian/overrides/$package"

# --- DEBIAN/ ---------------------------------------------------------------------------------
mkdir -p "$root/DEBIAN"
installed_size=$(du -k -s --apparent-size "$root" | cut -f1)
sed -e "s|@VERSION@|$deb_version|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@INSTALLED_SIZE@|$installed_size|" packaging/debian/control.in > "$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print0 | sort -z |
   xargs -0 md5sum | sed 's|  \./|  |') > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# Directories 0755, and one time stamp for everything (reproducible builds).
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

deb="$outdir/${package}_${deb_version}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
