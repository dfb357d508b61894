#!/usr/bin/env bash
# Fetch Debian's CJK font packages (and Unihan, from `unicode-data`) for pml_recallk.datasets.HanGlyphs.
#
# Usage:  bash benchmarks/fetch_han_fonts.sh [--small] [DEST]     (this file ships as pml_recallk/scripts/)
#         bash benchmarks/fetch_han_fonts.sh --where [--small]    (print the default DEST and exit)
#
#   DEST      folder to fill: DEST/debs/*.deb (the downloads) and DEST/pkgs/PACKAGE/ (each unpacked with dpkg -x).
#             Default: the folder HanGlyphs reads by default, $PML_RECALLK_HAN_FONTS if set, else
#             ${PML_RECALLK_CACHE:-~/.cache/pml-recallk}/han-fonts (han-fonts-small with --small, where the
#             tests look), so `pml-recallk train --dataset han_glyphs` finds the fonts with no argument.
#   --small   the CI set (~40 MB): a few Chinese and Japanese designs plus every trap the tests check
#             (a Korean font with blank hanja, a font drawing hanja as hangul, faces FreeType cannot render,
#             one design under two family names).
#
# Nothing is installed on the system (`apt-get download` + `dpkg -x`; no root needed unless apt has no lists,
# in which case run `apt-get update` first, e.g. as root). Re-running skips packages already unpacked at the
# same version. Packages this release lacks are skipped with a warning. Metapackages (no font files of their
# own) are resolved to the font packages they depend on. The full set is ~890 MB of .debs, ~3 GB unpacked.
# Then:  HanGlyphs() finds the default DEST; another DEST: HanGlyphs(font_dir="DEST") or PML_RECALLK_HAN_FONTS=DEST
set -euo pipefail

FULL=(
  # Chinese and pan-CJK: cover (nearly) all 3,500 level-1 characters.
  fonts-noto-cjk fonts-noto-cjk-extra fonts-arphic-uming fonts-arphic-ukai fonts-arphic-gbsn00lp
  fonts-arphic-gkai00mp fonts-babelstone-han fonts-cns11643-kai fonts-cns11643-sung fonts-hanazono
  fonts-lxgw-wenkai fonts-wqy-zenhei fonts-wqy-microhei fonts-droid-fallback fonts-smiley-sans
  # Traditional-only Chinese sets.
  fonts-arphic-bsmi00lp fonts-arphic-bkai00mp fonts-cwtex-fs fonts-cwtex-heib fonts-cwtex-kai fonts-cwtex-ming
  fonts-cwtex-yen
  # Japanese (kanji: no simplified forms).
  fonts-ipafont fonts-ipaexfont fonts-ipamj-mincho fonts-takao fonts-morisawa-bizud-gothic
  fonts-morisawa-bizud-mincho fonts-horai-umefont fonts-umeplus fonts-umeplus-cl fonts-motoya-l-cedar
  fonts-motoya-l-maruberi fonts-mmcedar fonts-mplus fonts-migmix fonts-vlgothic fonts-konatu fonts-komatuna
  fonts-monapo fonts-mona fonts-kiloji fonts-kouzan-mouhitsu fonts-aoyagi-kouzan-t fonts-aoyagi-soseki
  fonts-klee fonts-rampart fonts-reggae fonts-rocknroll fonts-stick fonts-dotgothic16 fonts-yusei-magic
  fonts-dejima-mincho fonts-oradano-mincho-gsrr fonts-sawarabi-gothic fonts-sawarabi-mincho fonts-yozvox-yozfont
  fonts-seto fonts-misaki fonts-ricty-diminished
  # Korean (hanja; several map them to blank or wrong glyphs: the loader filters those).
  fonts-nanum fonts-nanum-extra fonts-nanum-eco fonts-naver-d2coding fonts-unfonts-core fonts-unfonts-extra
  fonts-baekmuk fonts-alee fonts-woowa-bm fonts-lexi-gulim fonts-lexi-saebom
)
SMALL=(
  fonts-arphic-gkai00mp fonts-arphic-gbsn00lp fonts-smiley-sans fonts-droid-fallback fonts-wqy-microhei
  fonts-ipafont-gothic fonts-takao-gothic fonts-sawarabi-gothic fonts-sawarabi-mincho fonts-motoya-l-cedar
  fonts-mmcedar fonts-alee fonts-woowa-bm fonts-horai-umefont
)
ALWAYS=(unicode-data)  # Unihan (kTGH): the character list

usage() { echo "usage: $0 [--small] [DEST]  (or --where [--small]: print the default DEST)" >&2; exit 2; }
packages=("${FULL[@]}")
dest=""
small=0
where=0
for arg in "$@"; do
  case "$arg" in
    --small) packages=("${SMALL[@]}"); small=1 ;;
    --where) where=1 ;;
    -h | --help) usage ;;
    -*) echo "error: unknown option $arg" >&2; usage ;;
    *) [ -z "$dest" ] || usage; dest="$arg" ;;
  esac
done
# The default is pml_recallk._paths' (cache_dir) and han_table.default_font_dir's: keep the three in step.
cache_root="${PML_RECALLK_CACHE:-$HOME/.cache/pml-recallk}"
if [ "$small" -eq 1 ]; then
  default_dest="$cache_root/han-fonts-small"
else
  default_dest="${PML_RECALLK_HAN_FONTS:-$cache_root/han-fonts}"
fi
if [ "$where" -eq 1 ]; then
  [ -z "$dest" ] || usage
  echo "$default_dest"
  exit 0
fi
[ -n "$dest" ] || { dest="$default_dest"; echo "Fetching into the default folder $dest"; }
packages+=("${ALWAYS[@]}")

if ! apt-cache show unicode-data >/dev/null 2>&1; then
  echo "error: apt has no package lists; run 'apt-get update' (as root) first" >&2
  exit 1
fi

mkdir -p "$dest/debs" "$dest/pkgs"
dest="$(cd "$dest" && pwd)"
font_pattern='\.(ttf|otf|ttc|otc)$'
apt_options=(-q)
# As root, apt warns that its sandbox user cannot write to DEST: download as root without the warning.
[ "$(id -u)" -ne 0 ] || apt_options+=(-o APT::Sandbox::User=root)

# fetch PACKAGE: download and unpack one package; a metapackage queues its font dependencies instead.
queue=("${packages[@]}")
declare -A seen=()
fetched=0
skipped=0
fetch() {
  local package="$1" version deb stamp deps fonts
  version="$(apt-cache show --no-all-versions "$package" 2>/dev/null | awk '/^Version:/{print $2; exit}' || true)"
  if [ -z "$version" ]; then
    echo "warning: package $package is not available in this release; skipping it" >&2
    skipped=$((skipped + 1))
    return 0
  fi
  stamp="$dest/pkgs/$package/.fetched"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
    echo "have $package $version"
  else
    deb="$(cd "$dest/debs" && ls "${package}"_*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ] || [ "$(dpkg-deb -f "$dest/debs/$deb" Version)" != "$version" ]; then
      rm -f "$dest/debs/${package}"_*.deb
      (cd "$dest/debs" && apt-get download "${apt_options[@]}" "$package=$version")
      deb="$(cd "$dest/debs" && ls "${package}"_*.deb | head -n1)"
    fi
    rm -rf "$dest/pkgs/$package.tmp"
    dpkg -x "$dest/debs/$deb" "$dest/pkgs/$package.tmp"
    rm -rf "$dest/pkgs/$package"
    mv "$dest/pkgs/$package.tmp" "$dest/pkgs/$package"
    echo "$version" >"$stamp"
    echo "got  $package $version"
    fetched=$((fetched + 1))
  fi
  # Count rather than `grep -q`: an early exit of grep would fail `find` with SIGPIPE under pipefail.
  fonts=$(find -L "$dest/pkgs/$package" -type f | grep -ciE "$font_pattern" || true)
  if [ "$package" != unicode-data ] && [ "$fonts" -eq 0 ]; then
    deps="$(apt-cache show --no-all-versions "$package" | awk -F': ' '/^Depends:/{print $2; exit}' \
      | tr ',|' '\n\n' | awk '{print $1}' | grep '^fonts-' || true)"
    echo "     $package has no font files (a metapackage): fetching ${deps//$'\n'/ }"
    for dep in $deps; do queue+=("$dep"); done
  fi
}

i=0
while [ "$i" -lt "${#queue[@]}" ]; do
  package="${queue[$i]}"
  i=$((i + 1))
  [ -z "${seen[$package]:-}" ] || continue
  seen[$package]=1
  fetch "$package"
done

count=$(find -L "$dest/pkgs" -type f | grep -ciE "$font_pattern" || true)
echo
echo "Done: $dest holds $count font files from ${#seen[@]} packages ($fetched unpacked now, $skipped unavailable)."
if [ "$small" -eq 0 ] && [ -d "$default_dest" ] && [ "$dest" = "$(cd "$default_dest" && pwd)" ]; then
  echo "HanGlyphs and 'pml-recallk train --dataset han_glyphs' find them there by default."
else
  echo "Use them with: HanGlyphs(font_dir=\"$dest\")  or  export PML_RECALLK_HAN_FONTS=\"$dest\""
fi
