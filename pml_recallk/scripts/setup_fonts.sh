#!/usr/bin/env bash
# Install Debian/Ubuntu font packages with many Latin, Greek and Cyrillic typefaces for the glyph benchmark:
#     pml_recallk.datasets.Glyphs(font_dirs=["/usr/share/fonts"], one_face_per_family=True)
#
# Usage:  sudo benchmarks/setup_fonts.sh                        # ~100 packages of text faces
#         sudo benchmarks/setup_fonts.sh --with-display-faces   # also fonts-aenigma, ~465 display faces
#
# On Debian 12 (bookworm) the text faces give Glyphs 811 usable faces in 149 families; adding the display
# faces gives 1,142 faces in 460 families, many of them hard to read (see docs/glyphs.md). Packages the
# distribution lacks are skipped with a warning, so the script also runs on other releases.
set -euo pipefail

TEXT_FACES=(
  # Large Latin/Greek/Cyrillic text families.
  fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-liberation2 fonts-freefont-ttf fonts-noto-core
  fonts-noto-mono fonts-croscore fonts-crosextra-caladea fonts-crosextra-carlito fonts-urw-base35
  fonts-cmu fonts-stix fonts-linuxlibertine fonts-ebgaramond fonts-paratype fonts-oldstandard
  fonts-sil-gentiumplus fonts-sil-charis fonts-sil-doulos fonts-sil-andika fonts-sil-galatia fonts-junicode
  fonts-gfs-didot fonts-gfs-neohellenic fonts-gfs-artemisia fonts-gfs-bodoni-classic fonts-gfs-baskerville
  fonts-gfs-porson fonts-uralic fonts-triod-postnaja fonts-georgewilliams
  # Sans, serif and slab text faces (mostly Latin, some with Greek/Cyrillic).
  fonts-open-sans fonts-roboto-unhinted fonts-roboto-slab fonts-lato fonts-cantarell fonts-inter fonts-oxygen
  fonts-mplus fonts-cabin fonts-karla fonts-dosis fonts-league-spartan fonts-manrope fonts-clear-sans fonts-play
  fonts-sora fonts-tuffy fonts-junction fonts-jura fonts-beteckna fonts-b612 fonts-go fonts-vollkorn
  fonts-quattrocento fonts-arapey fonts-yrsa-rasa fonts-lindenhill fonts-goudybookletter fonts-fanwood
  fonts-prociono fonts-averia-gwf fonts-adf-accanthis fonts-adf-baskervald fonts-adf-berenis fonts-adf-gillius
  fonts-adf-ikarius fonts-adf-libris fonts-adf-mekanus fonts-adf-romande fonts-adf-tribun fonts-adf-universalis
  fonts-adf-verana fonts-sil-gentium-basic
  # Monospaced faces.
  fonts-jetbrains-mono fonts-hack fonts-firacode fonts-inconsolata fonts-mononoki fonts-monoid fonts-hermit
  fonts-agave fonts-fantasque-sans fonts-courier-prime fonts-3270 fonts-ocr-b
  # Informal and handwriting-like faces.
  fonts-comic-neue fonts-humor-sans fonts-opendyslexic fonts-dustin fonts-isabella fonts-kristi fonts-lobster
  fonts-staypuft fonts-summersby fonts-sjfonts fonts-dkg-handwriting fonts-gotico-antiqua
)
# About 465 display faces by one designer (Brian Kent): many families, but Latin only and often barely legible.
DISPLAY_FACES=(fonts-aenigma)

packages=("${TEXT_FACES[@]}")
case "${1:-}" in
  "") ;;
  --with-display-faces) packages+=("${DISPLAY_FACES[@]}") ;;
  *) echo "usage: $0 [--with-display-faces]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (apt-get install needs it), e.g. sudo $0 $*" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update

available=()
for package in "${packages[@]}"; do
  if apt-cache show "$package" >/dev/null 2>&1; then
    available+=("$package")
  else
    echo "warning: package $package is not available here; skipping it" >&2
  fi
done

apt-get install -y --no-install-recommends "${available[@]}"

echo
count=$(find -L /usr/share/fonts -type f \( -iname '*.ttf' -o -iname '*.otf' -o -iname '*.ttc' \) | wc -l)
echo "Installed ${#available[@]} font packages; /usr/share/fonts now holds $count TrueType/OpenType files."
echo "Use them with: Glyphs(font_dirs=[\"/usr/share/fonts\"], one_face_per_family=True)"
