#!/usr/bin/env bash
# omnifm_monai entry point for a fresh machine:
#   bash run.sh main   set up, build the reference sites from packaged real images, run federated OmniFM on them
#   bash run.sh test   set up, run the whole test suite
# Set-up is idempotent: a virtual environment in .venv with the package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${OMNIFM_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    # torch first, pinned: an unpinned torch pulled in by MONAI would resolve to a multi-GB CUDA build
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e ".[test,fl,bench]"
}

debian_data() {
    # optional real volumes (Colin27 T1 atlas, head CT); the reference sites are built without them too
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        dpkg -s mricron-data invesalius-examples >/dev/null 2>&1 || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data invesalius-examples >/dev/null
        } || echo "note: Debian data packages not installed; building the reference sites from pip sources only"
    fi
}

case "${1:-}" in
    main)
        setup
        debian_data
        shift
        SITES=outputs/reference_sites
        # every site but the simulated T1 scanners, which exist for the intra-modality benchmark
        [ -f "$SITES/sites.json" ] || "$PY" -m omnifm_monai.data build_reference_sites --output_dir "$SITES" \
            --sites icbm_t1,colin_t1,icbm_t2w,icbm_pdw,icbm_flair,head_ct,epi_t2star,dwi_b0
        # federated OmniFM segmentation across the MR reference sites (real T1 x2, simulated T2w/PDw/FLAIR);
        # resumes if interrupted; prints each site's test metrics; metrics.csv, TensorBoard, the global
        # model and the bank land in $OUT (or in --output DIR)
        OUT=outputs/fl_omnifm_segmentation
        "$PY" -m omnifm_monai.fl simulate --bundle bundles/omnifm_segmentation --strategy omnifm \
            --rounds 10 --reference_dir "$SITES" --output "$OUT" "$@"
        ;;
    test)
        setup
        debian_data
        shift
        "$PY" -m pytest "$@"
        ;;
    *)
        echo "usage: bash run.sh main|test [extra arguments]" >&2
        exit 2
        ;;
esac
