#!/usr/bin/env bash
# Fetch the npm packages the icon data set and the MobileNetV2 port are built from (pinned versions, sha256 checked).
#
# Usage:  bash benchmarks/icons/fetch.sh [--small] [DEST]     (DEST defaults to benchmarks/.cache/npm)
#
#   full      @iconify/json@2.2.553 (137 MB; 281 icon sets) + nsfwjs@4.3.0 (25 MB; the MobileNetV2 weights)
#             + @tensorflow/tfjs@4.22.0 (31 MB; the pure-JS runtime that checks the port in node).
#   --small   the CI slice (~4 MB): 19 single-set packages @iconify-json/<prefix> (13 design families, two of
#             them split over two sets, one non-commercial set and one logo set that the builder must leave out),
#             plus nsfwjs and tfjs for the port test.
#
# Each package lands in DEST/<tarball name without .tgz>/package/. Re-running skips tarballs already there with the
# recorded hash. Needs `npm` (it only runs `npm pack`: nothing is installed and no scripts run).
# Then:  python benchmarks/icons/build.py --source DEST --output benchmarks/.cache/icons
#        python benchmarks/icons/convert_mobilenet_v2.py --nsfwjs DEST/nsfwjs-4.3.0/package --output FILE.pth
set -euo pipefail

# tarball → sha256 (from `sha256sum` of the tarballs `npm pack` gave on 2026-12-06; a changed hash aborts).
declare -A SHA256=(
  [iconify-json-2.2.553.tgz]=acf23ea102e682c28c367f76d44caa60b90365570201304358891386d52393a1
  [nsfwjs-4.3.0.tgz]=4496790efc9bdc6f3e85a826a8e482c1fa1e9db4b3d18c095e98cc0c73cfb12f
  [tensorflow-tfjs-4.22.0.tgz]=56505c191e24116787477b3bb5bb1cc0cf1c2bdce8112b9c402a8a2d31cf2f00
  [iconify-json-famicons-1.2.2.tgz]=41d4087c1047a454d1eff70dec4d787bf05061e787427925ce691589b511f278
  [iconify-json-ion-1.2.7.tgz]=4103445dba712aa0f6d119706df00b2e821634f9ca96faac5ddbfb3bad65927f
  [iconify-json-heroicons-outline-1.2.1.tgz]=9e50f519e583ddbdd2f2f07c0728f87281d002ef40e860031c2777eb774f1228
  [iconify-json-heroicons-solid-1.2.1.tgz]=03237ccebdf8cc14263a5ac3bbff6b5356d981e4a5c286543756f33a0ea68867
  [iconify-json-akar-icons-1.2.7.tgz]=21d871932fc182074cd206b88d6b40cbeffa45d17fdf800fc3bc81358e8ff8c0
  [iconify-json-gg-1.2.2.tgz]=ee7a061fb05fdadcc7fdcf7b11d6d4aec427a8695f92efd909a0af242028eb44
  [iconify-json-humbleicons-1.2.20.tgz]=f1221ddb636a8192726868809a82c917beb96ef04b10397439c8cfb6ecfc676d
  [iconify-json-charm-1.2.3.tgz]=4f33aa5c39c17fae420b96777d168acda138ffba9d966552e78955a8a33fffcb
  [iconify-json-eva-1.2.3.tgz]=728a5f3f5ea238be5ce65ef3306042d188b9eda52d652f8108ab205264696a97
  [iconify-json-jam-1.2.3.tgz]=fb174e7358cca8e070ad5ca7a8462713f1cd7b45e894a18e13dcefddeeb04022
  [iconify-json-iconoir-1.2.11.tgz]=8e5d3bfbd55aa8ef3878f0c2f248cf71fe99822172fd07990e32ab7fe7a68b1e
  [iconify-json-zondicons-1.2.2.tgz]=bf1688f0cc50f8ef21f0178ef7e1fcc2df5f9faab98d96018686d326964a7b91
  [iconify-json-radix-icons-1.2.6.tgz]=96af74dd8a61686a4d2c27772d7eecdcab155bd3904722ebfc9c46ca6dcaa00f
  [iconify-json-tabler-1.2.41.tgz]=3bf99af156d28d05568aff524a35ed1ba238df640a7835a5e02e1f8e439685f6
  [iconify-json-bi-1.2.7.tgz]=86a7f213711c929169dbcd64318cd678a0845385156fc707401ba07cbde4da0d
  [iconify-json-mi-1.2.2.tgz]=e2a78d01ec0d049248f4084378253629c034d2f91b6b4570a6e124ef1653b279
  [iconify-json-system-uicons-1.2.4.tgz]=4cb72e98269e4c0fbb60399f9c3da643c093113f6e5c641fa724437e47b72239
  [iconify-json-ps-1.2.0.tgz]=7cdc29f312246aada5d1e280dd137e0f6295a4f2dad6c723a7f88e4b4dbc97d1
  [iconify-json-brandico-1.2.3.tgz]=c189891e1e4e09f09cb431f5fd1244940b31a99e27840d542f23b3873de6141b
)
BACKBONE=(nsfwjs@4.3.0 @tensorflow/tfjs@4.22.0)
FULL=(@iconify/json@2.2.553)
SMALL=(
  @iconify-json/famicons@1.2.2 @iconify-json/ion@1.2.7 @iconify-json/heroicons-outline@1.2.1
  @iconify-json/heroicons-solid@1.2.1 @iconify-json/akar-icons@1.2.7 @iconify-json/gg@1.2.2
  @iconify-json/humbleicons@1.2.20 @iconify-json/charm@1.2.3 @iconify-json/eva@1.2.3 @iconify-json/jam@1.2.3
  @iconify-json/iconoir@1.2.11 @iconify-json/zondicons@1.2.2 @iconify-json/radix-icons@1.2.6
  @iconify-json/tabler@1.2.41 @iconify-json/bi@1.2.7 @iconify-json/mi@1.2.2 @iconify-json/system-uicons@1.2.4
  @iconify-json/ps@1.2.0 @iconify-json/brandico@1.2.3
)

usage() { echo "usage: $0 [--small] [DEST]" >&2; exit 2; }
packages=("${FULL[@]}")
dest=""
for arg in "$@"; do
  case "$arg" in
    --small) packages=("${SMALL[@]}") ;;
    -h | --help) usage ;;
    -*) echo "error: unknown option $arg" >&2; usage ;;
    *) [ -z "$dest" ] || usage; dest="$arg" ;;
  esac
done
dest="${dest:-$(dirname "$0")/../.cache/npm}"
packages+=("${BACKBONE[@]}")
command -v npm >/dev/null || { echo "error: npm is not installed (apt-get install npm, or nodejs from nodejs.org)" >&2; exit 1; }
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

for spec in "${packages[@]}"; do
  # @scope/name@version → scope-name-version.tgz, npm pack's file name.
  name="${spec%@*}"
  version="${spec##*@}"
  tarball="$(echo "${name#@}" | tr / -)-$version.tgz"
  if [ ! -f "$dest/$tarball" ]; then
    (cd "$dest" && npm pack --silent "$spec" >/dev/null)
  fi
  actual="$(sha256sum "$dest/$tarball" | cut -d' ' -f1)"
  expected="${SHA256[$tarball]:?no recorded sha256 for $tarball}"
  if [ "$actual" != "$expected" ]; then
    echo "error: $tarball has sha256 $actual, expected $expected; delete it and fetch again" >&2
    exit 1
  fi
  folder="$dest/${tarball%.tgz}"
  if [ ! -f "$folder/.sha256" ] || [ "$(cat "$folder/.sha256")" != "$actual" ]; then
    rm -rf "$folder"
    mkdir -p "$folder"
    tar -xzf "$dest/$tarball" -C "$folder"
    echo "$actual" >"$folder/.sha256"
  fi
  echo "$actual  $tarball"
done | tee "$dest/sha256.txt"
echo "Done: packages unpacked under $dest (hashes in $dest/sha256.txt)"
