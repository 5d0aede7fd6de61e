#!/usr/bin/env bash
# omnifm_monai entry point for a fresh machine:
#   bash run.sh main   set up, build the reference sites from packaged real images, run federated OmniFM on them
#   bash run.sh test   set up, run the whole test suite
#   bash run.sh label  set up, train (or reuse) the segmentation bundle, serve it with MONAI Label on localhost
# Set-up is idempotent: a virtual environment in .venv with the package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${OMNIFM_VENV:-.venv}
PY="$VENV/bin/python"
LABEL_VENV=${OMNIFM_LABEL_VENV:-.venv-label}

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    # torch first, pinned: an unpinned torch pulled in by MONAI would resolve to a multi-GB CUDA build
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e ".[test,fl,bench]"
}

setup_label() {
    # MONAI Label 0.8.5 needs numpy<2 and pydicom 2: its own venv. torch first, pinned (the CPU wheel); monailabel
    # without its requirements (they pull sam2, which builds against a CUDA torch), then what it and the app import
    local py="$LABEL_VENV/bin/python" stamp="$LABEL_VENV/.requirements.sha256"
    [ -x "$py" ] || python3 -m venv "$LABEL_VENV"
    sha256sum apps/monailabel/requirements.txt | cmp -s - "$stamp" && return 0
    "$py" -m pip install -q torch==2.13.0
    "$py" -m pip install -q --no-deps --no-warn-conflicts monailabel==0.8.5
    "$py" -m pip install -q --no-warn-conflicts -r apps/monailabel/requirements.txt
    "$py" -m pip install -q --no-deps --no-warn-conflicts -e .
    sha256sum apps/monailabel/requirements.txt >"$stamp"
}

debian_data() {
    # optional real volumes (Colin27 T1 atlas, head CT); the reference sites are built without them too
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        dpkg -s mricron-data invesalius-examples >/dev/null 2>&1 || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data invesalius-examples >/dev/null
        } || echo "note: Debian data packages not installed; building the reference sites from pip sources only"
    fi
}

SITES=outputs/reference_sites
reference_sites() {
    # every site but the simulated T1 scanners, which exist for the intra-modality benchmark
    [ -f "$SITES/sites.json" ] || "$PY" -m omnifm_monai.data build_reference_sites --output_dir "$SITES" \
        --sites icbm_t1,colin_t1,icbm_t2w,icbm_pdw,icbm_flair,head_ct,epi_t2star,dwi_b0
}

case "${1:-}" in
    main)
        setup
        debian_data
        shift
        reference_sites
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
        setup_label
        OMNIFM_LABEL_PYTHON="$(cd "$LABEL_VENV" && pwd)/bin/python"  # set: the MONAI Label test runs, never skips
        export OMNIFM_LABEL_PYTHON
        "$PY" -m pytest "$@"
        ;;
    label)
        setup
        debian_data
        setup_label
        shift
        reference_sites
        # a short training (5 epochs on icbm_t1) unless a checkpoint is there; the bundle's own command trains longer
        BUNDLE=bundles/omnifm_segmentation
        [ -f "$BUNDLE/models/model.pt" ] || "$PY" -m monai.bundle run --config_file "$BUNDLE/configs/train.json" \
            --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
            --bundle_root "$BUNDLE" --dataset_dir "$SITES/icbm_t1" --max_epochs 5
        # the studies folder starts with the real ICBM152 T1 volume; 3D Slicer / OHIF add theirs
        STUDIES=outputs/monailabel_studies
        mkdir -p "$STUDIES"
        [ -n "$(ls "$STUDIES")" ] || cp "$("$PY" -c "from omnifm_monai.data import packaged_image as p; print(p('icbm152_t1'))")" \
            "$STUDIES/icbm152_t1.nii.gz"
        # localhost only; no SAM2 and the GitHub zoo source (unused for a local bundle) keep it off the network
        exec "$LABEL_VENV/bin/python" -m monailabel.main start_server --app apps/monailabel --studies "$STUDIES" \
            --host 127.0.0.1 --port 8000 --conf sam2 false --conf zoo_source github "$@"
        ;;
    *)
        echo "usage: bash run.sh main|test|label [extra arguments]" >&2
        exit 2
        ;;
esac
