"""Paper reproductions, run by `scorelab reproduce NAME [--quick] [--json PATH]`."""

from . import fit_multiview, ncsn_toy, repaint, sampler_accuracy

# name -> module with TITLE, OUTPUTS (the names it writes) and run(out_dir, *, quick, seed, progress) -> dict (with a
# 'table' of rows, 'figure' and 'passed')
REPRODUCTIONS = {
    "ncsn-toy": ncsn_toy,
    "sampler-accuracy": sampler_accuracy,
    "fit-multiview": fit_multiview,
    "repaint": repaint,
}
