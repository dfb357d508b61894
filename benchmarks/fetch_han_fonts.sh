#!/usr/bin/env bash
# Runs pml_recallk/scripts/fetch_han_fonts.sh, where the script lives so that it ships with the package (the error messages
# of a pip install name it there); this one keeps the docs' commands from a clone working. Same arguments.
exec bash "$(dirname "$0")/../pml_recallk/scripts/fetch_han_fonts.sh" "$@"
